//! Debian's Prometheus for tests: started on a free loopback port with its own storage in a
//! temporary directory, scraping the given targets every second; killed on drop. Shared by
//! the health crate's tests and the binary's lab test (included with `#[path]`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A running Prometheus; killed (and its storage removed) on drop.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:PORT` of its HTTP API.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every second.
    pub fn start(targets: &[String]) -> Prometheus {
        assert!(
            std::path::Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} missing: apt-get install prometheus"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: gatus\n    static_configs: [{{targets: [{}]}}]\n",
                quoted.join(", ")
            ),
        )
        .expect("write config");
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Stops it now (a test of what happens without it).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
