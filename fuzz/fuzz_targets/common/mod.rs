//! What several fuzz targets share: the example home lab and the DNS views built from it.
//! Built once per process; no I/O per input.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use dns::sync::provider::Provider;

/// A current-thread runtime with timers, built once, for targets that drive async code.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A manifest tree, loaded as `trellis` loads it.
pub fn load(roots: &[PathBuf], vars: model::subst::Vars) -> model::Snapshot {
    let opts = store::Options {
        vars,
        default_namespace: "default".into(),
        ..Default::default()
    };
    store::load(roots, &opts).snapshot
}

/// The example home lab (`examples/home-lab`) with its Flux variables.
pub fn home_lab() -> &'static model::Snapshot {
    static LAB: OnceLock<model::Snapshot> = OnceLock::new();
    LAB.get_or_init(|| {
        let root = root();
        let text = std::fs::read_to_string(root.join("examples/home-lab/vars.yaml"))
            .expect("the example's vars file");
        let vars = model::subst::parse_vars(&text).expect("the example's vars parse");
        load(&[root.join("examples/home-lab")], vars)
    })
}

/// The home lab's views (LAN and public, by client address), two rewrite rules (exact and
/// regex) and a dynamic zone's records merged in: everything a query can meet.
pub fn dns_views() -> Arc<dns::Views> {
    static VIEWS: OnceLock<Arc<dns::Views>> = OnceLock::new();
    VIEWS
        .get_or_init(|| {
            let mut views = dns::compile_views(home_lab(), &dns::ZoneConfig::default());
            assert!(
                views.views.len() >= 2,
                "the example has a LAN and a public view"
            );
            for rule in [
                "name exact auth.example.test. a.example.test.",
                r"name regex ^(.*)\.alias\.example\.test\.$ {1}.example.test. answer auto",
            ] {
                views
                    .rewrites
                    .push(model::validate::parse_rewrite(rule).expect("the rule parses"));
            }
            let dynamic = dns::sync::dynamic::Dynamic::new(&["example.test".into()]);
            let ep = |name: &str, ty: &str, t: &str| dns::sync::Endpoint::new(name, ty, [t], "");
            let changes = dns::sync::Changes {
                create: vec![
                    ep("a.example.test", "A", "192.0.2.1"),
                    ep("b.example.test", "CNAME", "a.example.test"),
                    ep("loop.example.test", "CNAME", "loop.example.test"),
                    ep("t.example.test", "TXT", "\"x\""),
                    ep("six.example.test", "AAAA", "2001:db8::1"),
                ],
                ..Default::default()
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            assert!(rt.block_on(dynamic.apply(&changes)).is_empty());
            dynamic.merge_into(&mut views);
            Arc::new(views)
        })
        .clone()
}

/// Queriers: in the LAN view, in the public view (v4 and v6), loopback.
pub const PEERS: &[&str] = &[
    "10.10.30.7:5353",
    "10.69.3.4:40000",
    "198.51.100.9:53000",
    "[2001:db8::9]:53000",
    "127.0.0.1:41000",
];

pub fn peer(which: u8) -> SocketAddr {
    PEERS[usize::from(which) % PEERS.len()]
        .parse()
        .expect("a socket address")
}

/// The messages of a DNS-over-TCP stream: each after its two-byte length; a partial last
/// one is left out.
pub fn frames(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [hi, lo, rest @ ..] = b {
        let n = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some(m) = rest.get(..n) else { break };
        out.push(m);
        b = &rest[n..];
    }
    out
}

/// The length of the plain question name at offset 12, if there is one.
pub fn question_name_len(q: &[u8]) -> Option<usize> {
    let mut i = 12;
    loop {
        let l = usize::from(*q.get(i)?);
        if l == 0 {
            return Some(i + 1 - 12);
        }
        if l > 63 {
            return None;
        }
        i += 1 + l;
    }
}

/// The same query with another ID and the letters of its question name in other case.
pub fn variant(q: &[u8]) -> Vec<u8> {
    let mut v = q.to_vec();
    if v.len() >= 2 {
        v[0] ^= 0x5a;
        v[1] ^= 0xa5;
    }
    if let Some(len) = question_name_len(q) {
        for (k, b) in v[12..12 + len].iter_mut().enumerate() {
            if b.is_ascii_alphabetic() && k % 2 == 0 {
                *b ^= 0x20;
            }
        }
    }
    v
}
