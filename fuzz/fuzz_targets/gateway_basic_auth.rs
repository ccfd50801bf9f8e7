//! The gateway's basic auth: `.htpasswd` texts (`BasicAuth::parse`, from a SecurityPolicy's
//! Secret) and `Authorization` headers (`BasicAuth::check`, from every client).
//!
//! - Users written as `htpasswd -s` writes them are read back, and each is let in with its
//!   password and refused with any other, or with another user's. (bcrypt entries are checked
//!   by the unit and curl tests: a bcrypt run per input would slow the fuzzer a thousandfold.)
//! - Arbitrary headers against any parsed file let in only a user of that file.
#![no_main]

use gateway::auth::{BasicAuth, BasicDenied};
use libfuzzer_sys::fuzz_target;

mod common;

/// `check` is async (a bcrypt entry is checked on a blocking thread).
fn check(b: &BasicAuth, h: &http::HeaderMap) -> Result<String, BasicDenied> {
    common::runtime().block_on(b.check(h, std::net::Ipv4Addr::LOCALHOST.into()))
}

fn sha1_b64(password: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
    data_encoding::BASE64.encode(d.as_ref())
}

fn basic(user: &str, password: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    let v = format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes())
    );
    h.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&v).expect("base64 is a header value"),
    );
    h
}

fuzz_target!(|input: (Vec<(String, String)>, String, Vec<u8>)| {
    let (users, text, header) = input;
    // Arbitrary text and an arbitrary header.
    if let Ok(b) = BasicAuth::parse(&text)
        && let Ok(v) = http::HeaderValue::from_bytes(&header)
    {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v);
        if let Ok(user) = check(&b, &h) {
            assert!(
                text.lines()
                    .any(|l| l.split_once(':').is_some_and(|(u, _)| u == user)),
                "{user:?} is a user of the file"
            );
        }
    }
    // Users as htpasswd writes them: a name without ':' or line breaks, any password.
    let mut users: Vec<(String, String)> = users
        .into_iter()
        .filter(|(u, _)| !u.is_empty() && !u.contains([':', '\n', '\r']) && u.trim() == u)
        .take(16)
        .collect();
    users.sort();
    users.dedup_by(|a, b| a.0 == b.0);
    if users.is_empty() {
        return;
    }
    let file: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{{SHA}}{}\n", sha1_b64(p)))
        .collect();
    let b = BasicAuth::parse(&file).expect("htpasswd -s output parses");
    for (i, (u, p)) in users.iter().enumerate() {
        assert_eq!(check(&b, &basic(u, p)).ok().as_deref(), Some(u.as_str()));
        assert!(check(&b, &basic(u, &format!("{p}x"))).is_err());
        let (other, _) = &users[(i + 1) % users.len()];
        if other != u {
            let wrong = users.iter().find(|(n, _)| n == other).map(|x| &x.1);
            if wrong != Some(p) {
                assert!(check(&b, &basic(other, p)).is_err());
            }
        }
    }
});
