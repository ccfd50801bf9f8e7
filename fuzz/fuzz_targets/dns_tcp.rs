//! Arbitrary bytes as a DNS-over-TCP connection (RFC 1035 4.2.2 length framing, several
//! messages per connection), served by the server's own connection loop over an in-memory
//! stream: the client's bytes are read, what it would be sent is kept.
//!
//! - Every answer is whole and framed; there is at most one per complete message sent, in
//!   order, and each is exactly the answer that message gets on its own.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use arc_swap::ArcSwap;
use dns::answer::Transport;
use dns::server::{Ops, answer_local, tcp_connection};
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

fn views() -> &'static ArcSwap<dns::Views> {
    static VIEWS: OnceLock<ArcSwap<dns::Views>> = OnceLock::new();
    VIEWS.get_or_init(|| ArcSwap::new(common::dns_views()))
}

fuzz_target!(|input: (u8, Vec<u8>)| {
    let (who, stream) = input;
    let peer = common::peer(who);
    let server: SocketAddr = "127.0.0.1:53".parse().expect("address");
    let mut io = tokio::io::join(stream.as_slice(), Vec::new());
    common::runtime().block_on(tcp_connection(
        &mut io,
        peer,
        server,
        views(),
        None,
        &Ops::default(),
    ));
    let (_, written) = io.into_inner();
    let sent = common::frames(&stream);
    let answers = common::frames(&written);
    let framed: usize = answers.iter().map(|a| a.len() + 2).sum();
    assert_eq!(framed, written.len(), "only whole answers are written");
    assert!(answers.len() <= sent.len());
    let views = views().load();
    for (q, a) in sent.iter().zip(&answers) {
        let alone = answer_local(&views, false, q, peer, Transport::Tcp);
        assert_eq!(alone.as_deref(), Some(*a));
    }
});
