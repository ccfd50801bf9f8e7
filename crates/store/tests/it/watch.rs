//! The watcher: a change is applied, a broken edit is rejected and the last good load stays.

use std::time::Duration;

use store::watch::{Update, Watch};

use crate::tree::write;

/// Bounded wait for the next update (the watcher reacts to inotify events, not polling).
fn next(w: &Watch) -> Update {
    w.updates
        .recv_timeout(Duration::from_secs(20))
        .expect("an update within 20 s")
}

#[test]
fn applies_good_changes_and_keeps_the_last_good_load_on_errors() {
    let t = tempfile::tempdir().expect("tmp");
    let r = t.path();
    write(
        r,
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: one}\n",
    );
    let w = Watch::start(
        vec![r.to_path_buf()],
        store::Options {
            default_namespace: "default".into(),
            ..Default::default()
        },
    )
    .expect("watch");
    assert_eq!(w.current().snapshot.services.len(), 1);

    write(
        r,
        "svc2.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: two}\n",
    );
    match next(&w) {
        Update::Applied(l) => assert_eq!(l.snapshot.services.len(), 2),
        other => panic!("expected Applied, got {other:?}"),
    }

    write(
        r,
        "svc2.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: two\n",
    );
    match next(&w) {
        Update::Rejected { errors, serving } => {
            assert!(
                errors[0].to_string().contains("svc2.yaml:4:1: error:"),
                "{}",
                errors[0]
            );
            assert_eq!(serving.snapshot.services.len(), 2);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        w.current().snapshot.services.len(),
        2,
        "the last good load still serves"
    );

    write(
        r,
        "svc2.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: three}\n",
    );
    match next(&w) {
        Update::Applied(l) => {
            assert!(model::snapshot::get(&l.snapshot.services, "default", "three").is_some())
        }
        other => panic!("expected Applied, got {other:?}"),
    }
}

/// A reader on another thread waits for the load it needs, woken by the change.
#[test]
fn a_reader_waits_for_the_load_it_needs() {
    let (watch, publisher) = store::watch::Watch::from_source(store::Load::default(), Box::new(()));
    let current = watch.current_handle();
    let waiter = std::thread::spawn(move || {
        current.wait_for(
            |l| !l.snapshot.entries.is_empty(),
            std::time::Duration::from_secs(30),
        )
    });
    let raws = model::RawObject::from_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n",
        "ns.yaml",
        "",
    )
    .expect("yaml");
    assert!(publisher.publish(store::Load {
        snapshot: model::Snapshot::build(raws, vec![]),
        ..Default::default()
    }));
    let got = waiter.join().expect("the reader");
    assert_eq!(got.snapshot.entries.len(), 1);
    // A condition never met: the current load once the time is up.
    let current = watch.current_handle();
    let l = current.wait_for(|_| false, std::time::Duration::from_millis(10));
    assert_eq!(l.snapshot.entries.len(), 1);
}
