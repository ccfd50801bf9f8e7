//! Gatus's conditions language: `[STATUS] == 200`, `[BODY].data[0].id == 1`,
//! `len([BODY].items) > 0`, `[IP] == pat(10.*)`, `[STATUS] == any(200, 201)`,
//! `[CERTIFICATE_EXPIRATION] > 48h`. A pure parser ([`Condition::parse`]) and evaluator
//! ([`Condition::evaluate`]) over a probe's [`Outcome`]; no I/O.
//!
//! Semantics follow Gatus: the operator is the first of `==`, `!=`, `<=`, `>=`, `>`, `<` (in
//! that order) found with a space on each side; equality compares as integers when both sides
//! are integers and as text otherwise, with `pat()` (glob) and `any()` on either side; the
//! ordering operators compare numbers, where a duration (`48h`, `1m30s`) counts in
//! milliseconds and anything that is not a number counts as 0. A JSONPath that does not
//! resolve makes its side `… (INVALID)`, which fails equality.
//!
//! Where this is stricter than Gatus, on purpose, a mistake is an error with its column
//! rather than a condition that silently never holds: an unknown `[PLACEHOLDER]`, a path on
//! anything but `[BODY]`, an unclosed function, `len()`/`has()` around a literal, `pat()` or
//! `any()` with an ordering operator, and a second operator of the same kind.

use std::fmt;
use std::time::Duration;

/// The longest condition accepted; longer is an error (a condition is one line of YAML).
pub const CONDITION_BYTES_MAX: usize = 4096;
/// How many elements a `[BODY]` path may have.
pub const PATH_SEGMENTS_MAX: usize = 64;

/// A condition that does not parse: what is wrong and where (1-based column, in characters).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

/// What a probe found, as the placeholders see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Whether a connection (or a DNS answer) was had.
    pub connected: bool,
    /// The HTTP status; 0 when there was none.
    pub status: u16,
    /// From the start of the probe to its answer.
    pub duration: Duration,
    /// The address the probe reached ("" when it did not resolve one).
    pub ip: String,
    pub body: Vec<u8>,
    /// `NOERROR`, `NXDOMAIN`, … for DNS probes; "" otherwise.
    pub dns_rcode: String,
    /// Milliseconds until the peer's certificate expires (negative once expired); 0 without a
    /// certificate, as in Gatus.
    pub certificate_expiration_ms: i64,
    /// Why the probe could not be made or completed.
    pub errors: Vec<String>,
    /// The body parsed as JSON, once for every condition that walks it.
    json: std::sync::OnceLock<Option<serde_json::Value>>,
}

impl Outcome {
    /// The body as JSON, parsed on first use; `None` when it is not JSON.
    fn body_json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(&self.body).ok())
            .as_ref()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Le,
    Ge,
    Gt,
    Lt,
}

impl Op {
    /// Gatus looks for the operators in this order, each with a space on both sides.
    const SEARCH: [(Op, &'static str); 6] = [
        (Op::Eq, " == "),
        (Op::Ne, " != "),
        (Op::Le, " <= "),
        (Op::Ge, " >= "),
        (Op::Gt, " > "),
        (Op::Lt, " < "),
    ];

    fn text(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Le => "<=",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Lt => "<",
        }
    }

    fn is_equality(self) -> bool {
        matches!(self, Op::Eq | Op::Ne)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholder {
    Status,
    ResponseTime,
    Ip,
    Body,
    Connected,
    CertificateExpiration,
    DnsRcode,
}

impl Placeholder {
    fn from_name(upper: &str) -> Option<Placeholder> {
        Some(match upper {
            "STATUS" => Placeholder::Status,
            "RESPONSE_TIME" => Placeholder::ResponseTime,
            "IP" => Placeholder::Ip,
            "BODY" => Placeholder::Body,
            "CONNECTED" => Placeholder::Connected,
            "CERTIFICATE_EXPIRATION" => Placeholder::CertificateExpiration,
            "DNS_RCODE" => Placeholder::DnsRcode,
            _ => return None,
        })
    }

    /// Whether the placeholder's value is a duration in milliseconds (shown as a duration).
    fn is_duration(self) -> bool {
        self == Placeholder::CertificateExpiration
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Len,
    Has,
}

/// One step of a `[BODY]` path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// One side of a condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Value {
        placeholder: Placeholder,
        /// Only with `[BODY]`.
        path: Vec<Segment>,
        func: Option<Func>,
    },
    /// `pat(GLOB)`.
    Pattern(String),
    /// `any(A, B, …)`.
    Any(Vec<String>),
    Literal(String),
}

/// A parsed condition, ready to evaluate any number of times.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub text: String,
    pub op: Op,
    left: (String, Operand),
    right: (String, Operand),
}

/// The outcome of one condition: whether it held, and the condition with its resolved values
/// as Gatus shows it (`[STATUS] (503) == 200`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub success: bool,
    pub shown: String,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Character column (1-based) of byte offset `at` in `s`.
fn column(s: &str, at: usize) -> usize {
    s[..at.min(s.len())].chars().count() + 1
}

impl Condition {
    pub fn parse(text: &str) -> Result<Condition, ParseError> {
        if text.len() > CONDITION_BYTES_MAX {
            return Err(ParseError {
                column: 1,
                message: format!("longer than {CONDITION_BYTES_MAX} bytes"),
            });
        }
        let Some((op, needle)) = Op::SEARCH.into_iter().find(|(_, n)| text.contains(n)) else {
            return Err(ParseError {
                column: 1,
                message: "no comparison: expected one of ==, !=, <, <=, >, >= with a space on \
                          each side (e.g. `[STATUS] == 200`)"
                    .into(),
            });
        };
        let at = text.find(needle).expect("found by contains");
        let rest = at + needle.len();
        if let Some(again) = text[rest..].find(needle) {
            return Err(ParseError {
                column: column(text, rest + again + 1),
                message: format!("a second `{}`: a condition compares two sides", op.text()),
            });
        }
        let left = operand(text, 0, at, op, "left")?;
        let right = operand(text, rest, text.len(), op, "right")?;
        Ok(Condition {
            text: text.to_string(),
            op,
            left,
            right,
        })
    }

    pub fn evaluate(&self, outcome: &Outcome) -> Verdict {
        let (lt, lo) = &self.left;
        let (rt, ro) = &self.right;
        let op = self.op;
        if op.is_equality() {
            let l = resolve(lo, outcome);
            let r = resolve(ro, outcome);
            let equal = equal(lo, &l, ro, &r);
            let success = if op == Op::Eq { equal } else { !equal };
            return Verdict {
                success,
                shown: show(lt, lo, &l, op, rt, ro, &r),
            };
        }
        let l = resolve(lo, outcome);
        let r = resolve(ro, outcome);
        let (ln, rn) = (number(&l), number(&r));
        let success = match op {
            Op::Le => ln <= rn,
            Op::Ge => ln >= rn,
            Op::Gt => ln > rn,
            Op::Lt => ln < rn,
            Op::Eq | Op::Ne => unreachable!("handled above"),
        };
        // Durations are shown as durations, other numbers as the number compared.
        let shown_num = |text: &str, o: &Operand, raw: &str, n: i64| {
            let is_duration = matches!(o, Operand::Value { placeholder, func: None, .. } if placeholder.is_duration())
                || (matches!(o, Operand::Literal(_)) && parse_go_duration(text).is_some());
            if is_duration {
                format_duration_ms(n)
            } else if raw.parse::<i64>().is_ok() {
                raw.to_string()
            } else {
                n.to_string()
            }
        };
        let ls = shown_num(lt, lo, &l, ln);
        let rs = shown_num(rt, ro, &r, rn);
        Verdict {
            success,
            shown: format!(
                "{} {} {}",
                with_value(lt, &ls),
                op.text(),
                with_value(rt, &rs)
            ),
        }
    }
}

fn with_value(text: &str, value: &str) -> String {
    if text == value {
        text.to_string()
    } else {
        format!("{text} ({value})")
    }
}

fn show(lt: &str, lo: &Operand, l: &str, op: Op, rt: &str, ro: &Operand, r: &str) -> String {
    let side = |text: &str, o: &Operand, v: &str| match o {
        Operand::Value { .. } => with_value(text, v),
        _ => text.to_string(),
    };
    format!("{} {} {}", side(lt, lo, l), op.text(), side(rt, ro, r))
}

/// Parses `text[from..to]` (trimmed) as one side.
fn operand(
    text: &str,
    from: usize,
    to: usize,
    op: Op,
    which: &str,
) -> Result<(String, Operand), ParseError> {
    let raw = &text[from..to];
    let lead = raw.len() - raw.trim_start().len();
    let s = raw.trim();
    let start = from + lead;
    let col = column(text, start);
    let err = |at: usize, message: String| ParseError {
        column: column(text, start + at),
        message,
    };
    if s.is_empty() {
        return Err(ParseError {
            column: col,
            message: format!("the {which} side is empty"),
        });
    }
    for (prefix, name) in [
        ("pat(", "pat"),
        ("any(", "any"),
        ("len(", "len"),
        ("has(", "has"),
    ] {
        let Some(inner) = s.strip_prefix(prefix) else {
            continue;
        };
        let Some(inner) = inner.strip_suffix(')') else {
            return Err(err(0, format!("`{name}(` is not closed with `)`")));
        };
        if (name == "pat" || name == "any") && !op.is_equality() {
            return Err(err(
                0,
                format!("{name}() works only with == and !=, not {}", op.text()),
            ));
        }
        let operand = match name {
            "pat" => Operand::Pattern(inner.to_string()),
            "any" => Operand::Any(inner.split(',').map(|o| o.trim().to_string()).collect()),
            _ => {
                let func = if name == "len" { Func::Len } else { Func::Has };
                match placeholder(inner, prefix.len()).map_err(|(at, m)| err(at, m))? {
                    Some((placeholder, path)) => Operand::Value {
                        placeholder,
                        path,
                        func: Some(func),
                    },
                    None => {
                        return Err(err(
                            prefix.len(),
                            format!("{name}() takes a placeholder, e.g. {name}([BODY].items)"),
                        ));
                    }
                }
            }
        };
        return Ok((s.to_string(), operand));
    }
    let operand = match placeholder(s, 0).map_err(|(at, m)| err(at, m))? {
        Some((placeholder, path)) => Operand::Value {
            placeholder,
            path,
            func: None,
        },
        None => Operand::Literal(s.to_string()),
    };
    Ok((s.to_string(), operand))
}

/// `[NAME]` optionally followed by a path. `None` for text that is not a placeholder (a
/// literal); an error (byte offset in `s` + `base`, message) for a placeholder-shaped word
/// Gatus does not know or a malformed path.
#[allow(clippy::type_complexity)]
fn placeholder(
    s: &str,
    base: usize,
) -> Result<Option<(Placeholder, Vec<Segment>)>, (usize, String)> {
    let Some(body) = s.strip_prefix('[') else {
        return Ok(None);
    };
    let Some(end) = body.find(']') else {
        return Ok(None);
    };
    let name = &body[..end];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
        return Ok(None);
    }
    let upper = name.to_ascii_uppercase();
    if upper == "DOMAIN_EXPIRATION" {
        // Gatus answers it with a WHOIS lookup; trellis makes none, and a condition it cannot
        // evaluate must not pass or fail by a made-up value.
        return Err((
            base,
            "[DOMAIN_EXPIRATION] needs a WHOIS lookup, which trellis does not make; remove the \
             condition (the endpoint is left out until then)"
                .into(),
        ));
    }
    let Some(p) = Placeholder::from_name(&upper) else {
        return Err((
            base,
            format!(
                "unknown placeholder [{name}]: expected [STATUS], [RESPONSE_TIME], [IP], [BODY], \
                 [CONNECTED], [CERTIFICATE_EXPIRATION] or [DNS_RCODE]"
            ),
        ));
    };
    let rest_at = end + 2;
    let rest = &s[rest_at..];
    if rest.is_empty() {
        return Ok(Some((p, Vec::new())));
    }
    if p != Placeholder::Body {
        return Err((
            base + rest_at,
            format!("only [BODY] takes a path, not [{name}]"),
        ));
    }
    let path = parse_path(rest).map_err(|(at, m)| (base + rest_at + at, m))?;
    Ok(Some((p, path)))
}

/// `.a.b[0][1].c` or `[0].a` into segments.
fn parse_path(s: &str) -> Result<Vec<Segment>, (usize, String)> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if out.len() >= PATH_SEGMENTS_MAX {
            return Err((
                i,
                format!("a path has at most {PATH_SEGMENTS_MAX} elements"),
            ));
        }
        match bytes[i] {
            b'[' => {
                let Some(close) = s[i..].find(']') else {
                    return Err((i, "`[` is not closed with `]`".into()));
                };
                let index = &s[i + 1..i + close];
                let n = index
                    .parse::<usize>()
                    .map_err(|_| (i + 1, format!("array index {index:?} is not a number")))?;
                out.push(Segment::Index(n));
                i += close + 1;
            }
            b'.' => {
                let key_end = s[i + 1..].find(['.', '[']).map_or(s.len(), |k| i + 1 + k);
                let key = &s[i + 1..key_end];
                if key.is_empty() {
                    return Err((i + 1, "empty key in the path".into()));
                }
                out.push(Segment::Key(key.to_string()));
                i = key_end;
            }
            _ => return Err((i, "expected `.key` or `[index]` in the path".into())),
        }
    }
    Ok(out)
}

const INVALID: &str = "(INVALID)";

/// The text a side stands for.
fn resolve(o: &Operand, outcome: &Outcome) -> String {
    let Operand::Value {
        placeholder,
        path,
        func,
    } = o
    else {
        return match o {
            Operand::Literal(s) => s.clone(),
            Operand::Pattern(p) => format!("pat({p})"),
            Operand::Any(v) => format!("any({})", v.join(", ")),
            Operand::Value { .. } => unreachable!("matched above"),
        };
    };
    let plain = match placeholder {
        Placeholder::Status => outcome.status.to_string(),
        Placeholder::ResponseTime => outcome.duration.as_millis().to_string(),
        Placeholder::Ip => outcome.ip.clone(),
        Placeholder::Connected => outcome.connected.to_string(),
        Placeholder::CertificateExpiration => outcome.certificate_expiration_ms.to_string(),
        Placeholder::DnsRcode => outcome.dns_rcode.clone(),
        Placeholder::Body => return resolve_body(path, *func, outcome),
    };
    match func {
        None => plain,
        Some(Func::Has) => (!plain.is_empty()).to_string(),
        Some(Func::Len) => plain.len().to_string(),
    }
}

fn resolve_body(path: &[Segment], func: Option<Func>, outcome: &Outcome) -> String {
    let body = &outcome.body;
    let text = String::from_utf8_lossy(body);
    if path.is_empty() {
        let trimmed = text.trim();
        return match func {
            None => trimmed.to_string(),
            Some(Func::Has) => (!trimmed.is_empty()).to_string(),
            // A JSON array counts its elements; anything else its bytes.
            Some(Func::Len) => match outcome.body_json() {
                Some(serde_json::Value::Array(a)) => a.len().to_string(),
                _ => {
                    if body.first() == Some(&b'[') && body.last() == Some(&b']') {
                        trimmed.len().to_string()
                    } else {
                        body.len().to_string()
                    }
                }
            },
        };
    }
    let found = outcome
        .body_json()
        .and_then(|v| walk(v, path).map(|v| (show_json(v), json_len(v))));
    match (func, found) {
        (Some(Func::Has), found) => found.is_some().to_string(),
        (Some(Func::Len), Some((_, n))) => n.to_string(),
        (None, Some((s, _))) => s,
        (_, None) => format!("[BODY]{} {INVALID}", show_path(path)),
    }
}

fn show_path(path: &[Segment]) -> String {
    path.iter()
        .map(|s| match s {
            Segment::Key(k) => format!(".{k}"),
            Segment::Index(i) => format!("[{i}]"),
        })
        .collect()
}

/// Follows `path`; `None` when a step is missing, goes through a scalar, or ends on null.
fn walk<'a>(v: &'a serde_json::Value, path: &[Segment]) -> Option<&'a serde_json::Value> {
    let mut v = v;
    for seg in path {
        v = match (seg, v) {
            (Segment::Key(k), serde_json::Value::Object(m)) => m.get(k)?,
            (Segment::Index(i), serde_json::Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    (!v.is_null()).then_some(v)
}

/// A value as Gatus prints it: strings bare, objects as compact JSON, arrays Go-style
/// (`[a b]`).
fn show_json(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::String(s) => s.clone(),
        J::Object(_) => v.to_string(),
        J::Array(a) => format!(
            "[{}]",
            a.iter().map(show_json).collect::<Vec<_>>().join(" ")
        ),
        J::Null => "<nil>".into(),
        J::Bool(b) => b.to_string(),
        J::Number(n) => n.to_string(),
    }
}

/// `len()`: an array's elements, otherwise the characters of the value as shown.
fn json_len(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => a.len(),
        other => show_json(other).len(),
    }
}

fn equal(lo: &Operand, l: &str, ro: &Operand, r: &str) -> bool {
    match (lo, ro) {
        (Operand::Pattern(p), other) if !matches!(other, Operand::Pattern(_)) => glob(p, r),
        (other, Operand::Pattern(p)) if !matches!(other, Operand::Pattern(_)) => glob(p, l),
        (Operand::Any(opts), other) if !matches!(other, Operand::Any(_)) => {
            opts.iter().any(|o| o == r)
        }
        (other, Operand::Any(opts)) if !matches!(other, Operand::Any(_)) => {
            opts.iter().any(|o| o == l)
        }
        _ => match (go_int(l), go_int(r)) {
            (Some(a), Some(b)) => a == b,
            _ => l == r,
        },
    }
}

/// A side as a number for `<`, `>`, …: a duration in milliseconds, an integer, a float
/// truncated, else 0.
fn number(s: &str) -> i64 {
    if let Some(d) = parse_go_duration(s).filter(|d| *d != 0) {
        return d;
    }
    if let Some(n) = go_int(s) {
        return n;
    }
    s.parse::<f64>().map(|f| f as i64).unwrap_or(0)
}

/// An integer as Go's `strconv.ParseInt(s, 0, 64)` reads it: optional sign, then decimal,
/// `0x`, `0o`, `0b`, or a leading `0` for octal; underscores only after a prefix.
fn go_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body, prefixed) = if let Some(b) = lower.strip_prefix("0x") {
        (16, b.to_string(), true)
    } else if let Some(b) = lower.strip_prefix("0o") {
        (8, b.to_string(), true)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower.clone(), false)
    };
    if body.is_empty() || (!prefixed && body.contains('_')) {
        return None;
    }
    let body: String = body.chars().filter(|c| *c != '_').collect();
    if body.is_empty() || body.starts_with(['+', '-']) {
        return None;
    }
    let v = i128::from_str_radix(&body, radix).ok()?;
    i64::try_from(if neg { -v } else { v }).ok()
}

/// A Go duration (`300ms`, `1.5h`, `1h30m`, `-2s`; units ns, us, µs, ms, s, m, h) in
/// milliseconds, truncated; `None` when it is not one. `0` alone is a duration of 0.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total_ns += value * unit_ns;
    }
    let ms = (total_ns / 1e6).trunc();
    if !ms.is_finite() || ms.abs() > i64::MAX as f64 {
        return None;
    }
    Some(if neg { -(ms as i64) } else { ms as i64 })
}

/// Milliseconds as Gatus shows a duration: whole seconds, no trailing zero units (`48h`,
/// `1h30m`, `1h0m15s`, `0s`).
fn format_duration_ms(ms: i64) -> String {
    let secs = ms / 1000;
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::from(sign);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 || (h > 0 && sec > 0) {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || s == 0 {
        out.push_str(&format!("{sec}s"));
    }
    out
}

/// A glob as Gatus matches `pat()`: `*` any run of characters, `?` one character, `[a-z]`
/// and `[^a-z]` classes, `\` escapes; `/` is ignored on both sides (it would stop `*`). A
/// malformed pattern matches nothing.
pub fn glob(pattern: &str, s: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some(tokens) = glob_tokens(pattern) else {
        return false;
    };
    let t: Vec<char> = s.chars().filter(|c| *c != '/').collect();
    // Linear scan with one backtrack point (the last `*`): no recursion, no blow-up.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match tokens.get(pi) {
            Some(Token::Star) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(tok) if tok.matches(t[ti]) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    pi = sp + 1;
                    ti = st + 1;
                }
                None => return false,
            },
        }
    }
    tokens[pi..].iter().all(|t| *t == Token::Star)
}

#[derive(Debug, PartialEq)]
enum Token {
    Star,
    One,
    Char(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star | Token::One => true,
            Token::Char(x) => *x == c,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
            }
        }
    }
}

/// `None` for a malformed pattern (unclosed class, reversed range, trailing `\`).
fn glob_tokens(pattern: &str) -> Option<Vec<Token>> {
    let p: Vec<char> = pattern.chars().filter(|c| *c != '/').collect();
    let mut out = Vec::new();
    let mut i = 0;
    let escaped = |i: &mut usize| -> Option<char> {
        if p[*i] == '\\' {
            *i += 1;
        }
        let c = *p.get(*i)?;
        *i += 1;
        Some(c)
    };
    while i < p.len() {
        match p[i] {
            '*' => {
                i += 1;
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
            }
            '?' => {
                i += 1;
                out.push(Token::One);
            }
            '[' => {
                i += 1;
                let negated = p.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    if *p.get(i)? == ']' && !ranges.is_empty() {
                        i += 1;
                        break;
                    }
                    let lo = escaped(&mut i)?;
                    let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
                        i += 1;
                        escaped(&mut i)?
                    } else {
                        lo
                    };
                    if lo > hi {
                        return None;
                    }
                    ranges.push((lo, hi));
                }
                out.push(Token::Class { negated, ranges });
            }
            _ => out.push(Token::Char(escaped(&mut i)?)),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
