//! The flow web UI in a real browser: headless Chromium driven by chromedriver over the W3C
//! WebDriver protocol (each command one `curl`), against `trellis gateway --ui-listen`.
//! Requests through the gateway must appear as rows of the flow table and as edges of the
//! service map with the right counts, and a filter typed into the page must narrow both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use super::observe::{drain, flow_gateway, observe};
use super::{bound_addr, curl_headers, within};

/// A chromedriver with one browser session; both end when this is dropped (the session is
/// deleted, which closes the browser, then chromedriver's process group is killed).
pub(crate) struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = webdriver(
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            None,
        );
        // chromedriver leads its own process group, so whatever browser process outlived
        // the session goes with it.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.wait();
    }
}

/// One WebDriver command; the response's `value`, or the WebDriver error as `Err`.
fn webdriver(method: &str, url: &str, body: Option<&Value>) -> Result<Value, String> {
    use std::io::Write;
    let mut curl = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-X", method, url])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("curl: {e}"))?;
    let text = body.map_or_else(String::new, Value::to_string);
    curl.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = curl.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{method} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{method} {url}: not JSON ({e})"))?;
    if v["value"]["error"].is_string() {
        return Err(format!("{method} {url}: {}", v["value"]));
    }
    Ok(v["value"].clone())
}

impl Browser {
    /// Starts chromedriver on a port it picks and opens a headless Chromium session.
    /// chromedriver's own choice of port can collide on a busy machine ("IPv4 port not
    /// available. Exiting..."): that start is tried again, a few times.
    pub(crate) fn start() -> Browser {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        const STARTS_MAX: usize = 5;
        let mut attempt = 0;
        let (mut driver, port, out) = loop {
            attempt += 1;
            let mut driver = Command::new("chromedriver")
                .arg("--port=0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start chromedriver ({e}): run `cargo xtask test`, which installs \
                         the Debian packages chromium and chromium-driver"
                    )
                });
            let mut out = std::io::BufReader::new(driver.stdout.take().expect("stdout")).lines();
            let mut seen = String::new();
            let port = loop {
                let Some(Ok(line)) = out.next() else {
                    break None;
                };
                seen.push_str(&line);
                seen.push('\n');
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    break Some(rest.trim_end_matches('.').to_string());
                }
            };
            match port {
                Some(port) => break (driver, port, out),
                None => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    assert!(
                        seen.contains("port not available") && attempt < STARTS_MAX,
                        "chromedriver ended without saying its port (start {attempt}):\n{seen}"
                    );
                }
            }
        };
        drain(out);
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("browser profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let session = match webdriver("POST", &format!("{base}/session"), Some(&caps)) {
            Ok(v) => v["sessionId"].as_str().expect("sessionId").to_string(),
            Err(e) => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(i32::try_from(driver.id()).expect("pid")),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = driver.wait();
                panic!(
                    "chromedriver cannot start Chromium: {e}\n(run `cargo xtask test`, which \
                     installs chromium and chromium-driver)"
                );
            }
        };
        Browser {
            driver,
            base,
            session,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        webdriver(method, &url, body).unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    pub(crate) fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({"url": url})));
    }

    /// Runs `body` (a function body) in the page; its return value.
    pub(crate) fn script(&self, body: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": body, "args": []})),
        )
    }

    /// The WebDriver element id of the one element matching `css`.
    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(&json!({"text": text})),
        );
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/click"), Some(&json!({})));
    }

    /// Saves a PNG of the window at `path`.
    fn screenshot(&self, path: &Path) {
        use std::io::Write;
        let b64 = self.call("GET", "/screenshot", None);
        let mut dec = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("base64 runs");
        dec.stdin
            .take()
            .expect("stdin")
            .write_all(b64.as_str().expect("base64 text").as_bytes())
            .expect("write");
        let png = dec.wait_with_output().expect("base64 -d").stdout;
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

/// What the page shows: flow rows (verdict, summary) and map edges (source, target,
/// verdict, flows), read from the DOM by their data attributes. (No key named `error`: that
/// is how WebDriver marks a failed command.)
const PAGE_STATE: &str = "return {
  rows: [...document.querySelectorAll('#flow-rows tr.flow')].map(r => ({
    verdict: r.dataset.verdict, type: r.dataset.type,
    summary: r.querySelector('.summary').textContent })),
  edges: [...document.querySelectorAll('#map g.edge')].map(e => ({
    source: e.dataset.source, target: e.dataset.target,
    verdict: e.dataset.verdict, flows: Number(e.dataset.flows) })),
  nodes: [...document.querySelectorAll('#map g.node')].map(n => n.dataset.node),
  status: document.getElementById('status').textContent,
  problem: document.getElementById('error').textContent,
  search: location.search,
};";

fn flows_of(edges: &Value, source: &str, target: &str) -> Option<u64> {
    edges.as_array()?.iter().find_map(|e| {
        (e["source"] == source && e["target"] == target && e["verdict"] == "FORWARDED")
            .then(|| e["flows"].as_u64())
            .flatten()
    })
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[test]
fn requests_through_the_gateway_show_in_the_browser_as_rows_and_map_edges() {
    let setup = flow_gateway(
        "[web.example.com]",
        &[
            "--observe-listen",
            "127.0.0.1:0",
            "--ui-listen",
            "127.0.0.1:0",
            "--node-name",
            "node-ui",
            "--access-log",
            "off",
        ],
        &["observer API", "flow UI on", "listener port 80 on"],
    );
    let [server, ui, gw] = setup.addrs();

    // Three answered requests and one that no route takes (404).
    let url = format!("http://{gw}/hello");
    within(20, || {
        curl_headers(&url, "web.example.com").filter(|h| h.starts_with("http/1.1 200"))
    })
    .expect("the gateway answers");
    for _ in 0..2 {
        let h = curl_headers(&url, "web.example.com").expect("answers");
        assert!(h.starts_with("http/1.1 200"), "{h}");
    }
    let h = curl_headers(&format!("http://{gw}/missing"), "other.example.com").expect("answers");
    assert!(h.starts_with("http/1.1 404"), "{h}");

    // Over gRPC, in `trellis observe`.
    let lines = within(20, || {
        let out = observe(&server, &[]);
        (out.lines().count() == 4).then_some(out)
    })
    .expect("four flows over gRPC");
    assert_eq!(
        lines.matches("(GET http://web.example.com/hello)").count(),
        3,
        "{lines}"
    );

    // And in the browser.
    let browser = Browser::start();
    browser.goto(&format!("http://{ui}/"));
    let page = within(30, || {
        let s = browser.script(PAGE_STATE);
        let ok = s["rows"].as_array().map(Vec::len) == Some(4)
            && flows_of(&s["edges"], "host", "service:apps/web") == Some(3)
            && flows_of(&s["edges"], "host", "host") == Some(1);
        ok.then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the page did not show 4 rows and the edges host -> apps/web (3) and host -> host \
             (1): {}",
            browser.script(PAGE_STATE)
        )
    });
    let rows = page["rows"].as_array().expect("rows");
    // Newest first: the 404 on top.
    assert!(
        rows[0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains(" 404 ") && s.ends_with("no route")),
        "{page}"
    );
    for r in &rows[1..] {
        assert_eq!(r["verdict"], "FORWARDED", "{page}");
        assert_eq!(r["type"], "http-response", "{page}");
        assert!(
            r["summary"]
                .as_str()
                .is_some_and(|s| s.contains("(GET http://web.example.com/hello)")),
            "{page}"
        );
    }
    assert_eq!(page["nodes"], json!(["host", "service:apps/web"]), "{page}");
    assert!(
        page["status"]
            .as_str()
            .is_some_and(|s| s.contains("4 seen") && s.contains("0 lost")),
        "{page}"
    );
    let shot = screenshot_path("ui-flows.png");
    browser.screenshot(&shot);
    println!("screenshot: {}", shot.display());

    // A filter typed into the page: only the 404 is left, in the table and in the map.
    browser.type_into("input[name='http-status']", "404");
    browser.click("#apply");
    let filtered = within(30, || {
        let s = browser.script(PAGE_STATE);
        let ok = s["rows"].as_array().map(Vec::len) == Some(1)
            && s["edges"].as_array().map(Vec::len) == Some(1)
            && flows_of(&s["edges"], "host", "host") == Some(1);
        ok.then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the http-status filter did not narrow the page: {}",
            browser.script(PAGE_STATE)
        )
    });
    assert!(
        filtered["rows"][0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains(" 404 ")),
        "{filtered}"
    );
    assert_eq!(filtered["search"], "?http-status=404", "{filtered}");
    assert_eq!(filtered["problem"], "", "{filtered}");

    // Flows that arrive while the page is open are added live (the 404 filter still on).
    let h = curl_headers(&format!("http://{gw}/later"), "other.example.com").expect("answers");
    assert!(h.starts_with("http/1.1 404"), "{h}");
    within(30, || {
        let s = browser.script(PAGE_STATE);
        (s["rows"].as_array().map(Vec::len) == Some(2)
            && flows_of(&s["edges"], "host", "host") == Some(2))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the new flow did not appear: {}",
            browser.script(PAGE_STATE)
        )
    });

    // Paused, the page holds new flows back and counts them; resumed, it shows them.
    browser.click("#pause");
    let h = curl_headers(&format!("http://{gw}/paused"), "other.example.com").expect("answers");
    assert!(h.starts_with("http/1.1 404"), "{h}");
    let count = "return document.getElementById('flow-count').textContent;";
    within(30, || {
        (browser.script(count) == json!("2 shown, 1 new while paused")).then_some(())
    })
    .unwrap_or_else(|| panic!("no held flow counted: {}", browser.script(count)));
    assert_eq!(
        browser.script(PAGE_STATE)["rows"].as_array().map(Vec::len),
        Some(2),
        "rows added while paused"
    );
    browser.click("#pause");
    assert_eq!(browser.script(count), json!("3 shown"));

    // A filter the server refuses is shown, not swallowed.
    browser.type_into("input[name='http-status']", "x");
    browser.click("#apply");
    let refused = within(30, || {
        let s = browser.script(PAGE_STATE);
        s["problem"]
            .as_str()
            .is_some_and(|e| e.contains("http_status_code"))
            .then_some(s)
    })
    .unwrap_or_else(|| panic!("no error shown: {}", browser.script(PAGE_STATE)));
    assert_eq!(
        refused["rows"].as_array().map(Vec::len),
        Some(0),
        "{refused}"
    );
    let shot = screenshot_path("ui-flows-refused-filter.png");
    browser.screenshot(&shot);
    println!("screenshot: {}", shot.display());
}

/// `trellis observe --ui-listen` serves the UI over another process's flows, read with
/// GetFlows: its map counts what the gateway saw.
#[test]
fn observe_serves_the_ui_over_a_remote_servers_flows() {
    use std::io::BufRead;
    let setup = flow_gateway(
        "[web.example.com]",
        &["--observe-listen", "127.0.0.1:0", "--access-log", "off"],
        &["observer API", "listener port 80 on"],
    );
    let [server, gw] = setup.addrs();
    let mut log = String::new();
    let url = format!("http://{gw}/hello");
    within(20, || {
        curl_headers(&url, "web.example.com").filter(|h| h.starts_with("http/1.1 200"))
    })
    .expect("the gateway answers");
    let mut relay = super::Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["observe", "--server", &server, "--ui-listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("trellis observe starts"),
    );
    let mut relay_err = std::io::BufReader::new(relay.0.stderr.take().expect("stderr")).lines();
    let ui = bound_addr(&mut relay_err, "flow UI on", &mut log);
    drain(relay_err);
    // A request after the relay started reaches it too (it follows).
    let h = curl_headers(&url, "web.example.com").expect("answers");
    assert!(h.starts_with("http/1.1 200"), "{h}");
    let map_url = format!("http://{ui}/api/map?http-status=200");
    let map = within(20, || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", &map_url])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (flows_of(&v["edges"], "host", "service:apps/web") == Some(2)).then_some(v)
    })
    .expect("the relay's map counts both requests");
    assert_eq!(map["flows"], 2, "{map}");
    let bad = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "%{http_code}",
            &format!("http://{ui}/api/map?verdict=maybe"),
        ])
        .output()
        .expect("curl");
    let bad = String::from_utf8_lossy(&bad.stdout);
    assert!(
        bad.contains("not a verdict") && bad.ends_with("400"),
        "{bad}"
    );
}
