//! tshark as the tests' witness of what crosses an interface: started in a network namespace
//! (`nsenter --net`, which execs it, so the child is tshark), its field lines read as they
//! come, stopped with SIGINT and killed on drop. Shared by the datapath, CNI and lab tests
//! (included with `#[path]`).
//!
//! tshark says "Capturing on" before dumpcap has opened every interface, and "Capture
//! started" only once it has a file to write, which on a quiet, filtered link can be many
//! seconds later: a test sends until [`Capture::wait_for`] sees a first frame, and only then
//! counts on the capture. `lo` comes up in the namespace (see [`Capture::start`]).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

pub struct Capture {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    said: std::thread::JoinHandle<String>,
}

impl Capture {
    /// Captures on `ifaces` in the namespace at `netns` (a path such as
    /// `/var/run/netns/NAME`) with the capture `filter` (libpcap's language, "" for none),
    /// printing `fields` tab-separated per frame.
    pub fn start(netns: &str, ifaces: &[&str], filter: &str, fields: &[&str]) -> Capture {
        // tshark's extcap helpers (androiddump) connect to 127.0.0.1 as it starts: with `lo`
        // down and a default route that connect waits about 20 s. A pod's runtime brings `lo`
        // up too.
        let lo = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ip", "link", "set", "lo", "up"])
            .status()
            .expect("ip runs");
        assert!(lo.success(), "lo up in {netns}");
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={netns}")).args([
            "tshark",
            "-l",
            "-n",
            "-T",
            "fields",
            "-a",
            "duration:120",
        ]);
        for i in ifaces {
            c.args(["-i", i]);
        }
        if !filter.is_empty() {
            c.args(["-f", filter]);
        }
        for f in fields {
            c.args(["-e", f]);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark (apt-get install tshark)");
        let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut said = Vec::new();
        for l in err.by_ref().map_while(Result::ok) {
            let started = l.contains("Capturing on");
            said.push(l);
            if started {
                break;
            }
        }
        assert!(
            said.last().is_some_and(|l| l.contains("Capturing on")),
            "tshark did not start capturing: {}",
            said.join("\n")
        );
        let said = std::thread::spawn(move || {
            said.extend(err.map_while(Result::ok));
            said.join("\n")
        });
        let (tx, lines) = std::sync::mpsc::channel();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Capture {
            child,
            lines,
            seen: Vec::new(),
            said,
        }
    }

    /// Waits at most `within` for a frame's line `f` accepts (tshark prints a frame a moment
    /// after it passed, a quiet link's frames only once the capture's buffer moves or it is
    /// stopped); true when one came.
    pub fn wait_for(&mut self, within: Duration, f: impl Fn(&str) -> bool) -> bool {
        if self.seen.iter().any(|l| f(l)) {
            return true;
        }
        let until = Instant::now() + within;
        while let Ok(l) = self
            .lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            let hit = f(&l);
            self.seen.push(l);
            if hit {
                return true;
            }
        }
        false
    }

    /// Stops tshark; every frame's line, and what it said on stderr.
    pub fn stop(mut self) -> (Vec<String>, String) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        // tshark has ended: its output ends, and with it the reader's channel.
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.lines.iter());
        let said = std::mem::replace(&mut self.said, std::thread::spawn(String::new))
            .join()
            .unwrap_or_default();
        (seen, said)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
