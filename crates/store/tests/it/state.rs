//! The state seam against its backends: one conformance run (create-if-absent, swap,
//! delete, leases, watches) on the in-process backend, the one-host file backend (also raced
//! between two instances as two processes would) and on a real 3-member etcd cluster
//! (Debian's etcd 3.4, started here on loopback); then what only a cluster can show: 100
//! races for one key through two members (exactly one winner each), pod CIDRs claimed at
//! once by three nodes, a registration that expires with its lease, a watch whose history
//! was compacted, one member down (still served) and two down (unavailable), then back
//! (served again, without anything done by hand). The Kubernetes backend runs the same
//! conformance against the mock API server (no API server can run here), with races, pod
//! CIDR claims and a registration whose Lease runs out.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::state::alloc;
use store::state::etcd::Etcd;
use store::state::file::Files;
use store::state::kube::Kube;
use store::state::memory::Memory;
use store::state::{Backend, Error, Event};

use crate::etcd_cluster::Cluster;
use crate::fake_api::FakeApi;

/// Waits for the next batch of a watch (at most 20 s).
async fn next(w: &mut store::state::Watch) -> Result<Vec<Event>, Error> {
    tokio::time::timeout(Duration::from_secs(20), w.events.recv())
        .await
        .expect("a watch event within 20 s")
        .expect("the watch is open")
}

/// What every backend must do the same way.
async fn conformance(b: &dyn Backend, root: &str) {
    let k = |s: &str| format!("{root}{s}");
    let start = b.list(root).await.expect("list");
    assert!(start.kvs.is_empty(), "{start:?}");
    let mut watch = b.watch(root, start.revision).await.expect("watch");

    // Create-if-absent: once.
    assert!(b.create(&k("a"), b"1", None).await.expect("create"));
    assert!(!b.create(&k("a"), b"2", None).await.expect("exists"));
    let a = b.get(&k("a")).await.expect("get").expect("a");
    assert_eq!(a.value, b"1");
    // Swap: only from the revision read.
    assert!(
        !b.swap(&k("a"), a.mod_revision + 100, b"3", None)
            .await
            .expect("stale")
    );
    assert!(
        b.swap(&k("a"), a.mod_revision, b"3", None)
            .await
            .expect("swap")
    );
    assert!(
        !b.swap(&k("a"), a.mod_revision, b"4", None)
            .await
            .expect("again stale")
    );
    assert!(
        !b.swap(&k("new"), 5, b"x", None)
            .await
            .expect("absent, not at 5")
    );
    assert!(
        b.swap(&k("new"), 0, b"x", None)
            .await
            .expect("absent is revision 0")
    );
    // Delete: only from the revision read.
    let a = b.get(&k("a")).await.expect("get").expect("a");
    assert!(
        !b.delete(&k("a"), a.mod_revision - 1)
            .await
            .expect("stale delete")
    );
    assert!(b.delete(&k("a"), a.mod_revision).await.expect("delete"));
    assert_eq!(b.get(&k("a")).await.expect("get"), None);
    // A value too large never leaves.
    let big = vec![0u8; store::state::VALUE_BYTES_MAX + 1];
    assert!(matches!(
        b.create(&k("big"), &big, None).await,
        Err(Error::Refused(_))
    ));
    // Listing: the prefix only, in key order.
    let l = b.list(root).await.expect("list");
    let keys: Vec<&str> = l.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, [k("new")]);
    assert!(b.list(&k("zzz")).await.expect("list").kvs.is_empty());

    // The watch saw every change in order.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.extend(next(&mut watch).await.expect("events"));
    }
    let shape: Vec<String> = seen
        .iter()
        .map(|e| match e {
            Event::Put(kv) => format!(
                "put {} {}",
                &kv.key[root.len()..],
                String::from_utf8_lossy(&kv.value)
            ),
            Event::Delete { key, .. } => format!("delete {}", &key[root.len()..]),
        })
        .collect();
    assert_eq!(shape, ["put a 1", "put a 3", "put new x", "delete a"]);

    // Leases: keys on a revoked lease go; a lease that does not exist is refused.
    let lease = b.grant(Duration::from_secs(30)).await.expect("grant");
    assert!(
        b.create(&k("leased"), b"l", Some(lease))
            .await
            .expect("leased")
    );
    assert!(b.keep_alive(lease).await.expect("keep alive").is_some());
    b.revoke(lease).await.expect("revoke");
    assert_eq!(b.get(&k("leased")).await.expect("get"), None);
    assert_eq!(b.keep_alive(lease).await.expect("gone lease"), None);
    assert!(matches!(
        b.create(&k("orphan"), b"o", Some(lease)).await,
        Err(Error::Refused(_))
    ));
}

#[tokio::test]
async fn the_memory_backend_conforms() {
    conformance(&Memory::default(), "/t/").await;
}

/// The one-host backend: the same conformance; two instances on one directory (as two
/// processes: each its own lock file description and cache) racing 100 times for one key with
/// exactly one winner each; a key on a lease that runs out, seen gone by the other instance's
/// watch; what was written read back by a fresh instance; a file that does not parse refused
/// with its path and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_backend_conforms_and_is_shared_between_processes() {
    let dir = tempfile::tempdir().expect("tmp");
    let one = Files::open(dir.path()).expect("open");
    conformance(&one, "/t/").await;

    // Races: two threads, each with its own instance, released together each round.
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let racer = |owner: &'static str| {
        let dir = dir.path().to_path_buf();
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let b = Files::open(&dir).expect("open");
            (0..100)
                .map(|i| {
                    barrier.wait();
                    rt.block_on(alloc::claim(&b, &format!("race{i}"), "10.10.30.50", owner))
                        .expect("claim")
                })
                .collect::<Vec<bool>>()
        })
    };
    let (a, c) = (racer("network/a"), racer("network/b"));
    let (a, c) = (a.join().expect("a"), c.join().expect("b"));
    for i in 0..100 {
        assert!(a[i] ^ c[i], "round {i}: a {}, b {}", a[i], c[i]);
    }

    // A lease that runs out: gone for the other instance's watch.
    let two = Files::open(dir.path()).expect("open");
    let start = two.list("/lease/").await.expect("list");
    let mut watch = two.watch("/lease/", start.revision).await.expect("watch");
    let lease = one.grant(Duration::from_secs(1)).await.expect("grant");
    assert!(
        one.create("/lease/k", b"v", Some(lease))
            .await
            .expect("create")
    );
    let mut seen = Vec::new();
    while !seen.iter().any(|e| matches!(e, Event::Delete { .. })) {
        seen.extend(next(&mut watch).await.expect("events"));
    }
    assert!(
        matches!(&seen[0], Event::Put(kv) if kv.key == "/lease/k"),
        "{seen:?}"
    );
    assert_eq!(one.get("/lease/k").await.expect("get"), None);

    // Durable: a fresh instance reads what was written.
    let fresh = Files::open(dir.path()).expect("open");
    let owner = fresh
        .get("/trellis/v1/claims/race7/10.10.30.50")
        .await
        .expect("get")
        .expect("race 7's claim");
    assert!(owner.value == b"network/a" || owner.value == b"network/b");

    // A torn file: refused with its path, not overwritten.
    drop((one, two, fresh));
    let path = dir.path().join("state.json");
    std::fs::write(&path, b"{\"revision\": 3, \"kvs\"").expect("tear");
    let e = Files::open(dir.path()).err().expect("refused");
    assert!(
        e.to_string().contains("state.json") && e.to_string().contains("not a trellis state file"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"{\"revision\": 3, \"kvs\""
    );
}

/// Retries `f` until it succeeds (at most `secs`); the backend coming up or back.
async fn until_ok<T>(secs: u64, mut f: impl AsyncFnMut() -> Result<T, Error>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still failing after {secs} s: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_conforms_and_survives_a_member_but_not_two() {
    let mut cluster = Cluster::start();
    let eps = cluster.endpoints();
    let b = Arc::new(
        Etcd::connect(&eps, Duration::from_secs(3))
            .await
            .expect("client"),
    );
    until_ok(30, async || b.list("/").await).await;
    conformance(b.as_ref(), "/conformance/").await;

    // 100 races for one key, through two different members: exactly one winner each time.
    let one = Etcd::connect(&eps[..1], Duration::from_secs(3))
        .await
        .expect("client");
    let two = Etcd::connect(&eps[1..2], Duration::from_secs(3))
        .await
        .expect("client");
    for i in 0..100 {
        let item = format!("10.10.30.{}", i % 250);
        let kind = format!("race{i}");
        let (a, c) = tokio::join!(
            alloc::claim(&one, &kind, &item, "network/a"),
            alloc::claim(&two, &kind, &item, "network/b"),
        );
        let (a, c) = (a.expect("a"), c.expect("b"));
        assert!(a ^ c, "round {i}: a {a}, b {c}");
    }

    // Three nodes claim pod CIDRs at once: three distinct ones, each stable.
    let pool: ipnet::Ipv4Net = "10.69.0.0/16".parse().expect("pool");
    let (x, y, z) = tokio::join!(
        alloc::claim_pod_cidr(&one, "node-1", pool, 24),
        alloc::claim_pod_cidr(&two, "node-2", pool, 24),
        alloc::claim_pod_cidr(b.as_ref(), "node-3", pool, 24),
    );
    let cidrs = [x.expect("1"), y.expect("2"), z.expect("3")];
    assert!(
        cidrs[0] != cidrs[1] && cidrs[1] != cidrs[2] && cidrs[0] != cidrs[2],
        "{cidrs:?}"
    );
    assert_eq!(
        alloc::claim_pod_cidr(&two, "node-1", pool, 24).await,
        Ok(cidrs[0])
    );

    // A registration that is not renewed goes with its lease (the watch says when).
    let before = b.list("/trellis/v1/nodes/").await.expect("list");
    let mut w = b
        .watch("/trellis/v1/nodes/", before.revision)
        .await
        .expect("watch");
    let reg = alloc::register_node(b.as_ref(), "node-9", b"{}", Duration::from_secs(2))
        .await
        .expect("register");
    assert!(matches!(
        next(&mut w).await.expect("put")[..],
        [Event::Put(_)]
    ));
    assert!(
        alloc::register_node(&one, "node-9", b"{}", Duration::from_secs(2))
            .await
            .is_err(),
        "the name is taken while the first agent lives"
    );
    let gone = next(&mut w).await.expect("expiry");
    assert!(
        matches!(&gone[..], [Event::Delete { key, .. }] if key.ends_with("/node-9")),
        "{gone:?}"
    );
    assert!(!reg.renew(b.as_ref()).await.expect("renew after expiry"));

    // A watch from a compacted revision is told to list again.
    let r = b.list("/").await.expect("list").revision;
    b.create("/compact/x", b"1", None).await.expect("put");
    let out = Command::new("etcdctl")
        .args([
            "--endpoints",
            &eps.join(","),
            "compact",
            &(r + 1).to_string(),
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl (apt-get install etcd-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (etcd creates the watch, then cancels it with the compaction: the first answer.)
    match b.watch("/compact/", r - 1).await {
        Err(Error::Compacted(_)) => {}
        Ok(mut w) => {
            let first = next(&mut w).await;
            assert!(matches!(first, Err(Error::Compacted(_))), "{first:?}");
        }
        Err(e) => panic!("{e}"),
    }

    // One member down: still served.
    cluster.members[0].stop();
    until_ok(30, async || b.create("/quorum/one-down", b"1", None).await).await;
    // Two down: no quorum; every call is unavailable, nothing is decided.
    cluster.members[1].stop();
    let e = b
        .create("/quorum/two-down", b"1", None)
        .await
        .expect_err("no quorum");
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    // Back: served again without anything done by hand. (The write that timed out may or may
    // not have been committed: a caller reads before it decides, as the claims do.)
    cluster.members[0].start();
    cluster.members[1].start();
    until_ok(60, async || b.create("/quorum/back", b"1", None).await).await;
    assert!(b.get("/quorum/one-down").await.expect("get").is_some());
}

#[test]
fn the_kubernetes_backend_conforms_and_its_leases_run_out() {
    let (fake, mock, handle) = FakeApi::new();
    let rt = fake.start(handle);
    let client = {
        let _g = rt.enter();
        kube::Client::new(mock, "default")
    };
    let b = Kube::new(client, "trellis-system");
    rt.block_on(async {
        conformance(&b, "/conformance/").await;

        // Races for one key: exactly one winner each time.
        for i in 0..20 {
            let (kind, item) = (format!("race{i}"), format!("10.10.30.{i}"));
            let (x, y) = tokio::join!(
                alloc::claim(&b, &kind, &item, "network/a"),
                alloc::claim(&b, &kind, &item, "network/b"),
            );
            let (x, y) = (x.expect("a"), y.expect("b"));
            assert!(x ^ y, "round {i}: a {x}, b {y}");
        }
        // Three nodes claim pod CIDRs at once: three distinct ones, each stable.
        let pool: ipnet::Ipv4Net = "10.69.0.0/16".parse().expect("pool");
        let (x, y, z) = tokio::join!(
            alloc::claim_pod_cidr(&b, "node-1", pool, 24),
            alloc::claim_pod_cidr(&b, "node-2", pool, 24),
            alloc::claim_pod_cidr(&b, "node-3", pool, 24),
        );
        let cidrs = [x.expect("1"), y.expect("2"), z.expect("3")];
        assert!(
            cidrs[0] != cidrs[1] && cidrs[1] != cidrs[2] && cidrs[0] != cidrs[2],
            "{cidrs:?}"
        );
        assert_eq!(
            alloc::claim_pod_cidr(&b, "node-1", pool, 24).await,
            Ok(cidrs[0])
        );

        // A registration that is not renewed goes with its Lease: the name is taken while
        // the Lease lives, and free once it ran out (Kubernetes keeps the objects; the
        // reader that finds the Lease past its time takes them away).
        let reg = alloc::register_node(&b, "node-9", b"{}", Duration::from_secs(1))
            .await
            .expect("register");
        assert!(
            alloc::register_node(&b, "node-9", b"{}", Duration::from_secs(1))
                .await
                .is_err(),
            "the name is taken while the first agent lives"
        );
        // Past renewTime + leaseDurationSeconds (no event says so: the Lease's time is all).
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert!(!reg.renew(&b).await.expect("renew after expiry"));
        let nodes = alloc::nodes(&b).await.expect("nodes");
        assert!(!nodes.iter().any(|(n, _)| n == "node-9"), "{nodes:?}");
        alloc::register_node(&b, "node-9", b"{}", Duration::from_secs(30))
            .await
            .expect("the name is free again");
    });
    assert!(fake.unexpected().is_empty(), "{:?}", fake.unexpected());
}
