//! The gateway's token decoders, fed from every client: compact JWS tokens (`jwt::decode`),
//! JWKS documents (`Jwks::parse`, fetched from a provider), cookie headers (`jwt::cookies`).
//!
//! - A token that decodes has a supported algorithm and covers exactly `header.payload`.
//! - A token whose signature was made with an HMAC key the JWKS holds verifies; flipping a
//!   byte of its payload makes it fail.
//! - Every cookie value found appears in the header it came from.
#![no_main]

use data_encoding::BASE64URL_NOPAD;
use gateway::jwt::{Jwks, cookies, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, Vec<u8>, String, Vec<u8>, Vec<u8>)| {
    let (token, jwks, cookie, secret, claims) = input;
    if let Ok(t) = decode(&token) {
        let dots: Vec<usize> = token.match_indices('.').map(|(i, _)| i).collect();
        assert_eq!(dots.len(), 2);
        assert_eq!(t.signed, &token.as_bytes()[..dots[1]]);
    }
    let _ = Jwks::parse(&jwks);

    // A signed token with a key of the set verifies, and tampering is caught.
    if !secret.is_empty()
        && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&claims).is_ok()
    {
        let set = format!(
            r#"{{"keys":[{{"kty":"oct","k":"{}"}}]}}"#,
            BASE64URL_NOPAD.encode(&secret)
        );
        let set = Jwks::parse(set.as_bytes()).expect("an oct key set");
        let signed = format!(
            "{}.{}",
            BASE64URL_NOPAD.encode(br#"{"alg":"HS256"}"#),
            BASE64URL_NOPAD.encode(&claims)
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let tag = ring::hmac::sign(&key, signed.as_bytes());
        let good = format!("{signed}.{}", BASE64URL_NOPAD.encode(tag.as_ref()));
        let t = decode(&good).expect("a token made here decodes");
        assert!(set.verify(&t).is_ok());
        let mut forged = t;
        forged.signature[0] ^= 1;
        assert!(set.verify(&forged).is_err());
    }

    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, v);
        if let Some((name, _)) = cookie
            .split(';')
            .next()
            .and_then(|p| p.trim().split_once('='))
        {
            for value in cookies(&h, name) {
                assert!(cookie.contains(&value));
            }
        }
    }
});
