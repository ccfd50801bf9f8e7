//! A real Knot DNS for tests: one zone from a zone file, on a free loopback port, stopped
//! (and its files removed) when dropped, with its query counters (`mod-stats`) readable
//! through `knotc`. Shared with the `trellis` binary's tests.

use std::process::Command;

/// A TSIG key Knot accepts updates and transfers with (`hmac-sha256`).
pub const TSIG_NAME: &str = "trellis-sync";
/// 32 random bytes, base64 (fixed: it only guards a loopback test server).
pub const TSIG_SECRET: &str = "Sx0Oc9Z1iJ8Jq0l0bYh8m7yqv6cJx4cJm3N2Q6iQKk0=";

/// A running knotd; killed when dropped.
pub struct Knot {
    child: std::process::Child,
    pub port: u16,
    zone: String,
    dir: tempfile::TempDir,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Knot {
    /// Serves `zone` from `zone_text` (a zone file); with `updates`, accepts DNS UPDATE and
    /// AXFR signed with [`TSIG_NAME`]. Returns once Knot answers `probe` (a name in the zone)
    /// with `expect` in the answer.
    pub fn start(zone: &str, zone_text: &str, updates: bool, probe: &str, expect: &str) -> Knot {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::create_dir_all(d.join("zones")).expect("mkdir");
        std::fs::write(d.join(format!("zones/{zone}.zone")), zone_text).expect("zone");
        let (keys, zone_acl) = if updates {
            (
                format!(
                    "key:\n  - id: {TSIG_NAME}\n    algorithm: hmac-sha256\n    secret: {TSIG_SECRET}\n\
                     acl:\n  - id: sync\n    key: {TSIG_NAME}\n    action: [update, transfer]\n"
                ),
                "\n    acl: sync",
            )
        } else {
            (String::new(), "")
        };
        // The free port is found by binding it and letting it go, so another process can take
        // it before knotd binds it (UDP and TCP): knotd then exits, and it starts again on
        // another port. A loaded machine (CI runs every test at once) may take seconds to
        // start it.
        for _attempt in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
                .port();
            std::fs::write(
                d.join("knot.conf"),
                format!(
                    "server:\n  rundir: \"{r}\"\n  listen: 127.0.0.1@{port}\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n\
                     log:\n  - target: stderr\n    any: error\ndatabase:\n  storage: \"{r}/db\"\n{keys}\
                     mod-stats:\n  - id: queries\n    query-type: on\n\
                     template:\n  - id: default\n    storage: \"{r}/zones\"\n    file: \"%s.zone\"\n    zonefile-sync: -1\n    journal-content: none\n    global-module: mod-stats/queries\nzone:\n  - domain: {zone}{zone_acl}\n",
                    r = d.display()
                ),
            )
            .expect("conf");
            let log = std::fs::File::create(d.join("knotd.log")).expect("log file");
            let mut child = Command::new("knotd")
                .arg("-c")
                .arg(d.join("knot.conf"))
                .stderr(log)
                .spawn()
                .expect("knotd runs (apt-get install knot)");
            // Knot answers once its zone is loaded.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                let answered = Command::new("dig")
                    .args([
                        "@127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "+short",
                        "+time=1",
                        "+tries=1",
                        probe,
                    ])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(expect));
                if answered {
                    return Knot {
                        child,
                        port,
                        zone: zone.to_string(),
                        dir,
                    };
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(d.join("knotd.log")).unwrap_or_default();
        panic!(
            "knotd did not come up (5 attempts on fresh ports, 30 s each); its last words:\n{log}"
        );
    }

    /// `kdig @knot +short NAME TYPE`, sorted lines.
    pub fn kdig(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = Command::new("kdig")
            .args([
                &format!("@127.0.0.1:{}", self.port),
                "+short",
                "+time=2",
                "+retry=0",
                name,
                rtype,
            ])
            .output()
            .expect("kdig runs (apt-get install knot-dnsutils)");
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    /// `knotc` on this server's control socket; its stdout.
    fn knotc(&self, args: &[&str]) -> String {
        let out = Command::new("knotc")
            .arg("-c")
            .arg(self.dir.path().join("knot.conf"))
            .args(args)
            .output()
            .expect("knotc runs (apt-get install knot)");
        assert!(
            out.status.success(),
            "knotc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Queries of type `rtype` Knot has answered since it started (its `mod-stats` counter),
    /// the probes of [`Knot::start`] included.
    #[allow(dead_code, reason = "used by the dns tests, not by trellis's")]
    pub fn queries(&self, rtype: &str) -> u64 {
        let want = format!("mod-stats.query-type[{rtype}] = ");
        self.knotc(&["stats", "mod-stats.query-type"])
            .lines()
            .find_map(|l| l.trim().strip_prefix(want.as_str()))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    }

    /// Serves `zone_text` from now on (the zone file rewritten and reloaded; give it a higher
    /// serial). Returns once Knot has loaded it.
    #[allow(dead_code, reason = "used by the dns tests, not by trellis's")]
    pub fn reload(&self, zone_text: &str) {
        let file = self.dir.path().join(format!("zones/{}.zone", self.zone));
        std::fs::write(file, zone_text).expect("zone");
        // -b: blocking, knotc returns once the zone is loaded.
        self.knotc(&["-b", "zone-reload", &self.zone]);
    }
}
