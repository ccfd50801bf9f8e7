//! Durable state under kill -9: a writer process is killed at random points of a bounded
//! burst of writes to an assignments file; after every kill the file must read back whole
//! and hold every write the writer acknowledged (printed after the write returned).

use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Writes in the whole burst, kills among them, and writes one writer run may do at most
/// (so the kills always fit in the burst: KILLS * WRITES_PER_RUN_MAX <= WRITES).
const WRITES: usize = 200;
const KILLS: usize = 20;
const WRITES_PER_RUN_MAX: usize = WRITES / KILLS;
/// Up to this long after an acknowledgement before the kill, so kills land anywhere inside
/// the following writes (creating, writing, fsync, rename, fsync of the directory).
const KILL_JITTER_US_MAX: u64 = 3000;

/// Kills and reaps the writer if the test fails while it runs.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// xorshift64: enough to scatter kill points; the seed is printed to replay a failure.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn(file: &Path, count: usize) -> Writer {
    Writer(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["lab", "write-assignments", "--file"])
            .arg(file)
            .args(["--count", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer"),
    )
}

/// The file reads whole, holds at least `acked` Services, and each is the one written.
fn check(file: &Path, acked: usize, seed: u64) -> usize {
    let a = lab::state::read_assignments(file)
        .unwrap_or_else(|e| panic!("seed {seed}: the file does not read whole: {e:#}"))
        .unwrap_or_default();
    let n = a.services.len();
    assert!(
        n >= acked,
        "seed {seed}: {acked} writes acknowledged, {n} in the file"
    );
    for i in 0..n {
        let want = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 100)) + i as u32);
        assert_eq!(
            a.cluster_ip("crash", &format!("svc-{i}")),
            Some(want),
            "seed {seed}: service {i} of {n}"
        );
    }
    n
}

#[test]
fn assignments_survive_kill_9_during_a_burst_of_writes() {
    let seed = std::env::var("TRELLIS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash test seed {seed} (TRELLIS_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(lab::state::ASSIGNMENTS_FILE);
    let mut acked = 0;
    let mut stored = 0;
    // Kills that met the writer inside its burst rather than idle after it.
    let mut mid_burst = 0;
    for _ in 0..KILLS {
        let before = stored;
        let mut writer = spawn(&file, WRITES_PER_RUN_MAX);
        let mut lines = BufReader::new(writer.0.stdout.take().expect("stdout")).lines();
        // Kill after 0..WRITES_PER_RUN_MAX acknowledgements of this run, a little later.
        for _ in 0..rng.below(WRITES_PER_RUN_MAX as u64) {
            let line = lines.next().expect("an ack").expect("read stdout");
            let n: usize = line
                .strip_prefix("acked ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            assert!(n > acked, "seed {seed}: acks go up");
            acked = n;
        }
        // Deliberately not awaiting an event: the point is a kill at an arbitrary moment.
        std::thread::sleep(Duration::from_micros(rng.below(KILL_JITTER_US_MAX)));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(writer.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9");
        let status = writer.0.wait().expect("reap");
        assert!(!status.success(), "seed {seed}: the writer was killed");
        // Acks the writer printed before it died count too: each followed a returned write.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("acked ").and_then(|n| n.parse().ok()) {
                acked = acked.max(n);
            }
        }
        stored = check(&file, acked, seed);
        mid_burst += usize::from(stored - before < WRITES_PER_RUN_MAX);
    }
    assert!(stored <= WRITES, "bounded burst");
    // The rest of the burst without kills, then every write is there.
    let mut writer = spawn(&file, WRITES - stored);
    drop(writer.0.stdin.take());
    let out = BufReader::new(writer.0.stdout.take().expect("stdout"));
    for line in out.lines().map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("acked ").and_then(|n| n.parse().ok()) {
            acked = acked.max(n);
        }
    }
    assert!(writer.0.wait().expect("reap").success(), "seed {seed}");
    assert_eq!((acked, check(&file, acked, seed)), (WRITES, WRITES));
    // Only the file and the temporaries of killed writers, which nothing reads.
    let mut temporaries = 0;
    for e in std::fs::read_dir(dir.path()).expect("list") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if name != lab::state::ASSIGNMENTS_FILE {
            assert!(
                store::durable::is_temporary(&name),
                "seed {seed}: unexpected {name}"
            );
            temporaries += 1;
        }
    }
    // Not asserted (they depend on timing): how many kills hit a write in progress.
    eprintln!(
        "{KILLS} kills: {mid_burst} inside a burst, {temporaries} left a temporary file behind"
    );
}
