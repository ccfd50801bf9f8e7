//! The health crate against real peers on loopback: an HTTP server (httpkit's), TCP
//! listeners, a TLS server and a small SMTP server with STARTTLS (tokio-rustls, a certificate
//! from rcgen), and Knot DNS; and the corpus's endpoints.

#[path = "../../../dns/tests/it/knot.rs"]
#[allow(dead_code)]
mod knot;

mod corpus;
mod probes;
mod prometheus;
mod scale;

use health::Endpoint;
use health::endpoints::parse_config;
use model::ObjectKey;

/// The endpoints of a Gatus config; panics on any problem.
pub fn gatus(yaml: &str) -> Vec<Endpoint> {
    let (list, problems) = parse_config(
        yaml,
        &ObjectKey::new("", "ConfigMap", "test", "test"),
        health::endpoints::INTERVAL_DEFAULT,
    );
    assert!(problems.is_empty(), "{problems:#?}");
    list
}

pub fn one(yaml: &str) -> Endpoint {
    let mut list = gatus(yaml);
    assert_eq!(list.len(), 1);
    list.remove(0)
}
