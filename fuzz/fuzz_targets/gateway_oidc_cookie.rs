//! The OIDC session and login cookies (`Oidc::open`), read from every client's Cookie header:
//! base64url, then AES-256-GCM under the policy's key with the cookie's name as associated
//! data.
//!
//! - An arbitrary value never opens: one that did would be a session nobody logged in for.
//! - A value sealed by the policy opens to what was sealed, under its own cookie name only.
//! - Changing any one byte of a sealed value makes it not open.
#![no_main]

use std::sync::OnceLock;

use data_encoding::BASE64URL_NOPAD;
use gateway::oidc::{Oidc, Settings};
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static Oidc {
    static OIDC: OnceLock<Oidc> = OnceLock::new();
    OIDC.get_or_init(|| {
        let spec = model::kinds::envoy::Oidc {
            provider: model::kinds::envoy::OidcProvider {
                issuer: "https://id.example".into(),
                ..Default::default()
            },
            client_id: Some("app".into()),
            ..Default::default()
        };
        Oidc::new(Settings {
            policy: "fuzz/policy",
            spec: &spec,
            client_secret: "a secret of the fuzz target".into(),
        })
        .expect("the policy compiles")
    })
}

fuzz_target!(|input: (String, String, Vec<u8>, u16, u8)| {
    let (name, text, plain, at, flip) = input;
    let o = policy();
    assert!(o.open_for_fuzz(&name, &text).is_none(), "a forged cookie opened");

    let sealed = o.seal_for_fuzz(&name, &plain);
    assert_eq!(o.open_for_fuzz(&name, &sealed).as_deref(), Some(plain.as_slice()));
    let other = format!("{name}x");
    assert!(o.open_for_fuzz(&other, &sealed).is_none(), "opened under another name");

    let mut raw = BASE64URL_NOPAD.decode(sealed.as_bytes()).expect("sealed is base64url");
    let i = usize::from(at) % raw.len();
    raw[i] ^= flip | 1;
    let tampered = BASE64URL_NOPAD.encode(&raw);
    assert!(o.open_for_fuzz(&name, &tampered).is_none(), "a tampered cookie opened");
});
