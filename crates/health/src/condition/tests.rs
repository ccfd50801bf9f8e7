//! Data-driven: `testdata/conditions.jsonl` (condition, probe outcome, verdict; the README's
//! examples re-expressed plus edge cases) and `testdata/condition_errors.jsonl` (condition,
//! column, part of the message).

use super::*;

fn outcome(v: &serde_json::Value) -> Outcome {
    let body = match v.get("body") {
        Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
        None => Vec::new(),
    };
    Outcome {
        connected: v["connected"].as_bool().unwrap_or(false),
        status: v["status"].as_u64().map_or(0, |s| s as u16),
        duration: Duration::from_millis(v["response_time_ms"].as_u64().unwrap_or(0)),
        ip: v["ip"].as_str().unwrap_or("").to_string(),
        body,
        dns_rcode: v["dns_rcode"].as_str().unwrap_or("").to_string(),
        certificate_expiration_ms: v["certificate_expiration_ms"].as_i64().unwrap_or(0),
        errors: Vec::new(),
        ..Outcome::default()
    }
}

fn cases(name: &str) -> Vec<(usize, serde_json::Value)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/");
    let text = std::fs::read_to_string(format!("{path}{name}")).expect("test data");
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with("//"))
        .map(|(i, l)| {
            let v = serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}:{}: {e}", i + 1));
            (i + 1, v)
        })
        .collect()
}

#[test]
fn conditions_evaluate_as_gatus_does() {
    let mut failures = Vec::new();
    for (line, case) in cases("conditions.jsonl") {
        let text = case["condition"].as_str().expect("condition");
        let c = match Condition::parse(text) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("line {line}: {text:?} does not parse: {e}"));
                continue;
            }
        };
        let v = c.evaluate(&outcome(&case["outcome"]));
        let want = case["success"].as_bool().expect("success");
        if v.success != want {
            failures.push(format!(
                "line {line}: {text:?} gave {} (shown {:?}), want {want}",
                v.success, v.shown
            ));
        }
        if let Some(shown) = case.get("shown").and_then(|s| s.as_str())
            && v.shown != shown
        {
            failures.push(format!(
                "line {line}: {text:?} shown {:?}, want {shown:?}",
                v.shown
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn conditions_that_do_not_parse_say_where() {
    let mut failures = Vec::new();
    for (line, case) in cases("condition_errors.jsonl") {
        let text = case["condition"].as_str().expect("condition");
        let col = case["column"].as_u64().expect("column") as usize;
        let part = case["message"].as_str().expect("message");
        match Condition::parse(text) {
            Ok(c) => failures.push(format!("line {line}: {text:?} parsed: {c:?}")),
            Err(e) if e.column != col || !e.message.contains(part) => failures.push(format!(
                "line {line}: {text:?}: got column {} {:?}, want column {col} containing {part:?}",
                e.column, e.message
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn go_numbers_and_durations() {
    assert_eq!(go_int("200"), Some(200));
    assert_eq!(go_int("0x1F"), Some(31));
    assert_eq!(go_int("017"), Some(15));
    assert_eq!(go_int("1_000"), None);
    assert_eq!(go_int("0x1_0"), Some(16));
    assert_eq!(go_int("abc"), None);
    assert_eq!(parse_go_duration("48h"), Some(48 * 3600 * 1000));
    assert_eq!(parse_go_duration("1h30m"), Some(90 * 60 * 1000));
    assert_eq!(parse_go_duration("1.5s"), Some(1500));
    assert_eq!(parse_go_duration("300"), None);
    assert_eq!(parse_go_duration("0"), Some(0));
    assert_eq!(format_duration_ms(48 * 3600 * 1000), "48h");
    assert_eq!(format_duration_ms(5415 * 1000), "1h30m15s");
    assert_eq!(format_duration_ms(3615 * 1000), "1h0m15s");
    assert_eq!(format_duration_ms(10_000), "10s");
    assert_eq!(format_duration_ms(0), "0s");
}

#[test]
fn globs() {
    assert!(glob("*", ""));
    assert!(glob("john*", "john.doe"));
    assert!(!glob("john*", "bob"));
    assert!(glob("*ok*", "{\"status\":\"ok\"}"));
    assert!(glob("192.168.*", "192.168.0.1"));
    assert!(glob("h?llo", "hello"));
    assert!(glob("[a-c]x", "bx"));
    assert!(!glob("[^a-c]x", "bx"));
    assert!(glob("a\\*b", "a*b"));
    assert!(!glob("a\\*b", "axb"));
    assert!(glob("*/api/*", "https://x/api/v1"), "slashes are ignored");
    assert!(!glob("[a-", "a"), "a malformed pattern matches nothing");
    assert!(!glob("[z-a]", "b"));
    assert!(glob("a*b*c", "aXXbYYc"));
    assert!(!glob("a*b*c", "aXXbYY"));
}
