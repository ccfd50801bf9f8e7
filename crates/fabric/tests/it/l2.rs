//! The L2 announcer against a lease store whose file went bad, in a network namespace of the
//! test's own (root: it adds a veth pair and addresses to it).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use fabric::l2::{Announcement, Announcer};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Before: a lease file that did not parse read as "no lease", so the second node took the
/// lease over and the first, at its next renewal, found it taken and let the address go.
/// Now nobody takes what nobody can read, and the holder keeps its address.
#[test]
fn a_corrupt_lease_keeps_the_holder_and_is_not_taken_over() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (a network namespace and a veth pair)"
    );
    // The namespace belongs to this test's thread only; `ip` inherits it, and it goes away
    // with the thread.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the netns");
    // A veth pair (the kernel may lack the dummy driver); lan0 has a carrier once both are up.
    ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ]);
    ip(&["link", "set", "lan1", "up"]);
    ip(&["link", "set", "lan0", "up"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = Ipv4Addr::new(10, 10, 30, 25);
    let want = [Announcement {
        lease: "l2announce-net-envoy".into(),
        ips: BTreeSet::from([addr]),
    }];
    let mut node1 = Announcer::new(dir.path(), "node-1", "lan0").expect("node-1");
    let mut node2 = Announcer::new(dir.path(), "node-2", "lan0").expect("node-2");
    assert_eq!(node1.tick(&want).len(), 1, "node-1 takes the free lease");
    assert!(node2.tick(&want).is_empty(), "node-2 waits");

    let file = dir.path().join("l2announce-net-envoy.json");
    std::fs::write(&file, b"{\"holder\":\"node-1\",\"dur").expect("tear the lease");
    assert!(
        node2.tick(&want).is_empty(),
        "node-2 does not take what it cannot read"
    );
    assert_eq!(node2.held().count(), 0);
    assert!(node1.tick(&want).is_empty());
    assert_eq!(
        node1.held().copied().collect::<Vec<_>>(),
        [addr],
        "node-1 keeps it"
    );
    assert_eq!(
        std::fs::read(&file).expect("read"),
        b"{\"holder\":\"node-1\",\"dur",
        "nobody overwrote the file"
    );

    // Removing the file frees the lease again; the holder renews it first.
    std::fs::remove_file(&file).expect("remove");
    node1.tick(&want);
    assert_eq!(node1.held().count(), 1);
    assert!(node2.tick(&want).is_empty());
    node1.release_all();
}
