//! Flux post-build variable substitution (`${VAR}`, `${VAR:=default}`, `${VAR:-default}`,
//! `${VAR=default}`, `${VAR-default}`, `$${VAR}` to escape).
//!
//! Substitution runs on scalar values after parsing, not on the file text: comments are never
//! substituted, positions stay exact, and a plain scalar that becomes a number (`port:
//! ${PORT:-80}`) is a number, as it is after Flux renders the YAML and re-parses it.
//! As in Flux's default mode, a variable with no value and no default is left as written and
//! reported; strict mode makes it an error.

use std::collections::BTreeMap;

/// The variables of one load, from `--vars FILE`.
pub type Vars = BTreeMap<String, String>;

/// An occurrence of a variable that had no value and no default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undefined {
    pub name: String,
}

/// Nested defaults deeper than this are left as written.
const NESTING_MAX: usize = 16;

/// Substitutes every `${...}` in `text`. Returns the new text and the variables that were
/// undefined (each occurrence once).
pub fn substitute(text: &str, vars: &Vars) -> (String, Vec<Undefined>) {
    let mut undefined = Vec::new();
    let out = expand(text, vars, &mut undefined, 0);
    (out, undefined)
}

fn expand(text: &str, vars: &Vars, undefined: &mut Vec<Undefined>, depth: usize) -> String {
    if !text.contains('$') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(escaped) = after.strip_prefix("$${") {
            // `$${X}` is the way to write a literal `${X}`.
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = matching_brace(body_start) else {
            // An unterminated `${` is text.
            out.push_str(after);
            rest = "";
            break;
        };
        let body = &body_start[..end];
        let whole = &after[..end + 3];
        out.push_str(&expand_one(body, whole, vars, undefined, depth));
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Index of the `}` that closes a `${` whose body starts at `s`, allowing nested `${...}`.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn expand_one(
    body: &str,
    whole: &str,
    vars: &Vars,
    undefined: &mut Vec<Undefined>,
    depth: usize,
) -> String {
    let name_len = body
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let (name, op) = body.split_at(name_len);
    if name.is_empty() || depth > NESTING_MAX {
        return whole.to_string();
    }
    let value = vars.get(name);
    let (default, empty_counts_as_unset) =
        if let Some(d) = op.strip_prefix(":=").or(op.strip_prefix(":-")) {
            (Some(d), true)
        } else if let Some(d) = op.strip_prefix('=').or(op.strip_prefix('-')) {
            (Some(d), false)
        } else if op.is_empty() {
            (None, false)
        } else {
            // Other shell operators (`${X:offset}`, `${#X}`...) are not Flux's; leave them.
            return whole.to_string();
        };
    match (value, default) {
        (Some(v), Some(_)) if empty_counts_as_unset && v.is_empty() => {
            expand(default.unwrap_or_default(), vars, undefined, depth + 1)
        }
        (Some(v), _) => v.clone(),
        (None, Some(d)) => expand(d, vars, undefined, depth + 1),
        (None, None) => {
            if !undefined.iter().any(|u| u.name == name) {
                undefined.push(Undefined {
                    name: name.to_string(),
                });
            }
            whole.to_string()
        }
    }
}

/// Reads a vars file: a YAML map (`NAME: value`) or env-style lines (`NAME=value`, `#`
/// comments, optional `export ` and quotes). Flux's `substituteFrom` ConfigMaps use the first
/// shape; `.env` files the second.
pub fn parse_vars(text: &str) -> Result<Vars, String> {
    let looks_env = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .all(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            l.find('=').is_some_and(|eq| {
                l[..eq]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !l[..eq].contains(':')
            })
        });
    if looks_env {
        let mut vars = Vars::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                .unwrap_or(v);
            vars.insert(k.trim().to_string(), v.to_string());
        }
        return Ok(vars);
    }
    let docs = crate::yaml::parse_documents(text).map_err(|e| e.to_string())?;
    let mut vars = Vars::new();
    for doc in docs {
        // A ConfigMap or Secret (Flux substituteFrom) carries the map under data/stringData.
        let map = doc.get("data").or(doc.get("stringData")).unwrap_or(&doc);
        let crate::yaml::Value::Map(entries) = &map.value else {
            return Err(format!("{}: vars must be a map of NAME: value", map.pos));
        };
        for (k, v) in entries {
            let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                return Err(format!("{}: vars values must be scalars", v.pos));
            };
            vars.insert(k.to_string(), v.to_string());
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn forms() {
        let v = vars(&[("APP", "grafana"), ("EMPTY", "")]);
        let cases = [
            ("${APP}", "grafana"),
            ("x-${APP}-y", "x-grafana-y"),
            ("${MISSING:=80}", "80"),
            ("${MISSING:-80}", "80"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${MISSING-d}", "d"),
            ("${APP_ROUTE_NAME:=${APP}}-2", "grafana-2"),
            ("${EXT:-${ALSO:-ak}}", "ak"),
            ("$${APP}", "${APP}"),
            ("cost $5", "cost $5"),
            ("${unterminated", "${unterminated"),
            ("${#APP}", "${#APP}"),
        ];
        for (input, want) in cases {
            assert_eq!(substitute(input, &v).0, want, "{input}");
        }
    }

    #[test]
    fn undefined_is_left_and_reported_once() {
        let (out, undefined) = substitute("${A}.${A}.${B:-b}", &Vars::new());
        assert_eq!(out, "${A}.${A}.b");
        assert_eq!(undefined, vec![Undefined { name: "A".into() }]);
    }

    #[test]
    fn vars_files() {
        let env = "# comment\nexport A=1\nB=\"two words\"\nC='x'\n";
        assert_eq!(
            parse_vars(env),
            Ok(vars(&[("A", "1"), ("B", "two words"), ("C", "x")]))
        );
        let yaml = "A: 1\nDOMAIN: example.com\n";
        assert_eq!(
            parse_vars(yaml),
            Ok(vars(&[("A", "1"), ("DOMAIN", "example.com")]))
        );
        let cm = "apiVersion: v1\nkind: ConfigMap\ndata:\n  A: b\n";
        assert_eq!(parse_vars(cm), Ok(vars(&[("A", "b")])));
        assert!(parse_vars("- a\n- b\n").is_err());
    }
}
