//! BackendTrafficPolicy compression against curl, which decodes zstd, brotli and gzip.

use std::sync::Arc;

use crate::harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressor_policy_with_curl() {
    let backends = harness::start_backends().await;
    let manifests = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: gateway-conformance-infra}\n\
         spec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n    - backendRefs: [{name: infra-backend-v1, port: 8080}]\n---\n\
         apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: p, namespace: gateway-conformance-infra}\n\
         spec:\n  targetSelectors: [{group: gateway.networking.k8s.io, kind: Gateway}]\n  compressor: [{type: Zstd, zstd: {}}, {type: Brotli, brotli: {}}, {type: Gzip, gzip: {}}]\n";
    let (_, running) = harness::serve(&backends, manifests, Arc::default()).await;
    let url = format!("http://{}/data?size=20000", running.bound[&80]);
    tokio::task::spawn_blocking(move || {
        for (accept, want) in [
            ("zstd", "zstd"),
            ("br", "br"),
            ("gzip", "gzip"),
            ("gzip;q=0.5, br;q=0.9", "br"),
            ("gzip, deflate, br, zstd", "zstd"),
        ] {
            let (headers, body) = harness::curl(&[
                "--compressed",
                "-H",
                &format!("Accept-Encoding: {accept}"),
                &url,
            ]);
            assert!(
                headers.contains(&format!("content-encoding: {want}\r\n")),
                "{accept}: {headers}"
            );
            assert!(headers.contains("vary: accept-encoding"), "{headers}");
            let v: serde_json::Value =
                serde_json::from_slice(&body).expect("decoded body is the JSON");
            assert_eq!(v["backend"], "infra-backend-v1");
            // What crossed the wire is much smaller than the 20 KB body.
            let (raw_headers, raw) =
                harness::curl(&["-H", &format!("Accept-Encoding: {want}"), &url]);
            // The length is gone (streamed) or is the compressed one (compressed whole).
            if let Some(len) = raw_headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
            {
                assert_eq!(
                    len.trim().parse::<usize>().ok(),
                    Some(raw.len()),
                    "{raw_headers}"
                );
            }
            assert!(
                raw.len() < body.len() / 4,
                "{want}: {} of {} bytes",
                raw.len(),
                body.len()
            );
        }
        // Refused or absent encodings, and bodiless answers, stay as they are.
        for args in [
            vec!["-H", "Accept-Encoding: gzip;q=0"],
            vec!["-H", "Accept-Encoding: identity"],
            vec![],
        ] {
            let mut a = args.clone();
            a.push(&url);
            let (headers, _) = harness::curl(&a);
            assert!(!headers.contains("content-encoding"), "{headers}");
        }
        let (headers, _) = harness::curl(&["-I", "-H", "Accept-Encoding: gzip", &url]);
        assert!(!headers.contains("content-encoding"), "HEAD: {headers}");
    })
    .await
    .expect("checks pass");
    running.stop().await;
}
