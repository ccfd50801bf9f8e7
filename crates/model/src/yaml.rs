//! A YAML reader that keeps positions.
//!
//! Manifests are parsed into a small tree ([`Node`]) whose every node knows its line and column,
//! so that a problem found much later ("spec.rules[2].backendRefs[0].port: service has no port
//! 8080") can still be reported as `file:line:col`. The tree resolves anchors, aliases and `<<:`
//! merge keys itself, reads multi-document streams, and keeps each scalar's style, so that Flux
//! variable substitution can re-type a plain scalar (`port: ${PORT:-80}` becomes the number 80).
//!
//! What does not live here: knowing what any field means. Typed decoding happens in
//! [`crate::decode`] from the `serde_json::Value` this module produces.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A line and column in a source file, both 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        Pos {
            line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
            col: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
        }
    }
}

/// One YAML node with the place it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// The value of a node. Scalars stay text until [`Node::to_json`] resolves them, because
/// variable substitution must run on the text first.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys in written order; duplicate keys are rejected while parsing.
    Map(Vec<(Node, Node)>),
}

/// A YAML syntax error at a position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Bounds on what one file may make us build; an alias bomb ("billion laughs") hits these and
/// is reported instead of eating memory.
pub const NODES_PER_FILE_MAX: usize = 1_000_000;
pub const DEPTH_MAX: usize = 128;

/// Parses a multi-document YAML stream. Empty documents (a lone `---`, comments only) are
/// dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut b = Builder {
        anchors: HashMap::new(),
        stack: Vec::new(),
        docs: Vec::new(),
        nodes: 0,
    };
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SyntaxError {
            pos: Pos {
                line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                col: u32::try_from(e.marker().col() + 1).unwrap_or(u32::MAX),
            },
            message: format!("{}{}", e.info(), b.open_flow(text)),
        })?;
        b.event(event, &span)?;
    }
    Ok(b.docs)
}

/// The character at a position (1-based line and column).
fn char_at(text: &str, pos: Pos) -> Option<char> {
    let line = text
        .split('\n')
        .nth(usize::try_from(pos.line).ok()?.checked_sub(1)?)?;
    line.chars()
        .nth(usize::try_from(pos.col).ok()?.checked_sub(1)?)
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder {
    anchors: HashMap<usize, Node>,
    stack: Vec<Frame>,
    docs: Vec<Node>,
    nodes: usize,
}

impl Builder {
    /// Where the innermost flow collection still open started, as the tail of a syntax
    /// error's message (` (in the flow sequence that started at 4:9)`): the error is often
    /// found far from the bracket that was never closed.
    fn open_flow(&self, text: &str) -> String {
        self.stack
            .iter()
            .rev()
            .find_map(|f| {
                let pos = match f {
                    Frame::Seq { pos, .. } | Frame::Map { pos, .. } => *pos,
                };
                let what = match char_at(text, pos)? {
                    '[' => "flow sequence",
                    '{' => "flow mapping",
                    _ => return None,
                };
                Some(format!(" (in the {what} that started at {pos})"))
            })
            .unwrap_or_default()
    }

    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), SyntaxError> {
        let pos = Pos::from_span(span);
        match event {
            Event::DocumentStart(_) => self.anchors.clear(),
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, ScalarStyle::Plain);
                let node = Node {
                    pos,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                };
                self.finish(node, anchor)?;
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    pos,
                    message: "alias refers to an unknown anchor".into(),
                })?;
                self.count(node_size(&node), pos)?;
                // An alias keeps the anchor's content but is reported where it is used.
                self.finish(
                    Node {
                        pos,
                        value: node.value,
                    },
                    0,
                )?;
            }
            Event::SequenceStart(anchor, _) => {
                self.depth(pos)?;
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.depth(pos)?;
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, anchor, items }) = self.stack.pop() {
                    self.finish(
                        Node {
                            pos,
                            value: Value::Seq(items),
                        },
                        anchor,
                    )?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) = self.stack.pop()
                {
                    let entries = apply_merge_keys(entries)?;
                    self.finish(
                        Node {
                            pos,
                            value: Value::Map(entries),
                        },
                        anchor,
                    )?;
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn depth(&self, pos: Pos) -> Result<(), SyntaxError> {
        if self.stack.len() >= DEPTH_MAX {
            return Err(SyntaxError {
                pos,
                message: format!("nesting deeper than {DEPTH_MAX}"),
            });
        }
        Ok(())
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), SyntaxError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > NODES_PER_FILE_MAX {
            return Err(SyntaxError {
                pos,
                message: format!("more than {NODES_PER_FILE_MAX} nodes (alias expansion?)"),
            });
        }
        Ok(())
    }

    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        self.count(1, node.pos)?;
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                // A document whose root is an empty plain scalar is an empty document.
                let empty = matches!(&node.value, Value::Scalar { text, plain: true } if text.is_empty() || text == "~" || text == "null");
                if !empty {
                    self.docs.push(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    if let Some(name) = k.as_str()
                        && name != "<<"
                        && entries.iter().any(|(e, _)| e.as_str() == Some(name))
                    {
                        return Err(SyntaxError {
                            pos: k.pos,
                            message: format!("duplicate key `{name}`"),
                        });
                    }
                    entries.push((k, node));
                }
            },
        }
        Ok(())
    }
}

fn node_size(node: &Node) -> usize {
    match &node.value {
        Value::Scalar { .. } => 1,
        Value::Seq(items) => 1 + items.iter().map(node_size).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| node_size(k) + node_size(v))
                .sum::<usize>()
        }
    }
}

/// Applies YAML 1.1 merge keys: `<<: *anchor` or `<<: [*a, *b]` copies the entries that the
/// mapping does not set itself; earlier sources win over later ones.
fn apply_merge_keys(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, SyntaxError> {
    if !entries.iter().any(|(k, _)| k.as_str() == Some("<<")) {
        return Ok(entries);
    }
    let mut own = Vec::new();
    let mut sources = Vec::new();
    for (k, v) in entries {
        if k.as_str() == Some("<<") {
            match v.value {
                Value::Map(m) => sources.push(m),
                Value::Seq(items) => {
                    for item in items {
                        match item.value {
                            Value::Map(m) => sources.push(m),
                            _ => {
                                return Err(SyntaxError {
                                    pos: item.pos,
                                    message: "merge key `<<` list items must be mappings".into(),
                                });
                            }
                        }
                    }
                }
                Value::Scalar { .. } => {
                    return Err(SyntaxError {
                        pos: v.pos,
                        message: "merge key `<<` needs a mapping or a list of mappings".into(),
                    });
                }
            }
        } else {
            own.push((k, v));
        }
    }
    for source in sources {
        for (k, v) in source {
            let present = own
                .iter()
                .any(|(o, _)| o.as_str().is_some() && o.as_str() == k.as_str());
            if !present {
                own.push((k, v));
            }
        }
    }
    Ok(own)
}

impl Node {
    /// The text of a scalar node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Looks up a key of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|e| &e.1),
            _ => None,
        }
    }

    /// Rewrites every scalar's text in place (keys are left alone).
    pub fn map_scalars(&mut self, f: &mut dyn FnMut(&mut String, Pos)) {
        match &mut self.value {
            Value::Scalar { text, .. } => f(text, self.pos),
            Value::Seq(items) => items.iter_mut().for_each(|n| n.map_scalars(f)),
            Value::Map(entries) => entries.iter_mut().for_each(|(_, v)| v.map_scalars(f)),
        }
    }

    /// Converts to JSON with the YAML 1.2 core schema for plain scalars (plus the YAML 1.1
    /// spellings Kubernetes users write: `yes`/`no`/`on`/`off` are kept as strings, as
    /// kubectl does). Also records, for every path, where it was written.
    pub fn to_json(&self, index: &mut PosIndex) -> serde_json::Value {
        self.to_json_at(&mut String::new(), index)
    }

    fn to_json_at(&self, path: &mut String, index: &mut PosIndex) -> serde_json::Value {
        index.0.insert(path.clone(), self.pos);
        match &self.value {
            Value::Scalar { text, plain } => {
                if *plain {
                    resolve_plain(text)
                } else {
                    serde_json::Value::String(text.clone())
                }
            }
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    out.push(item.to_json_at(path, index));
                    path.truncate(len);
                }
                serde_json::Value::Array(out)
            }
            Value::Map(entries) => {
                let mut out = serde_json::Map::with_capacity(entries.len());
                for (k, v) in entries {
                    let key = match &k.value {
                        Value::Scalar { text, .. } => text.clone(),
                        // Complex keys do not occur in Kubernetes manifests; keep them visible.
                        _ => format!("{:?}", k.value),
                    };
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&key);
                    let value = v.to_json_at(path, index);
                    // A field is reported where its key is written (`prots:`), which is where an
                    // editor should jump; sequence items keep their own position.
                    index.0.insert(path.clone(), k.pos);
                    path.truncate(len);
                    out.insert(key, value);
                }
                serde_json::Value::Object(out)
            }
        }
    }
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
pub fn resolve_plain(text: &str) -> serde_json::Value {
    use serde_json::Value as J;
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return J::Null,
        "true" | "True" | "TRUE" => return J::Bool(true),
        "false" | "False" | "FALSE" => return J::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = text.parse::<i64>()
    {
        return J::Number(n.into());
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(n) = i64::from_str_radix(hex, 16)
    {
        return J::Number(n.into());
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(n) = i64::from_str_radix(oct, 8)
    {
        return J::Number(n.into());
    }
    let looks_float = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_float
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return J::Number(n);
    }
    J::String(text.to_string())
}

/// Where each field path of a document was written: `spec.rules[0].matches` -> 12:9.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PosIndex(pub HashMap<String, Pos>);

impl PosIndex {
    /// The position of `path`, or of its nearest written ancestor (a defaulted field has no
    /// position of its own, its parent has).
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.0.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
            if p.is_empty() {
                return self.0.get("").copied();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Vec<serde_json::Value> {
        parse_documents(text)
            .expect("valid yaml")
            .iter()
            .map(|d| d.to_json(&mut PosIndex::default()))
            .collect()
    }

    #[test]
    fn multi_document_and_empty_documents() {
        let docs = json("---\na: 1\n---\n# only a comment\n---\nb: x\n...\n");
        assert_eq!(
            docs,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": "x"})]
        );
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let text = "base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\nname: &n web\nref: *n\n";
        assert_eq!(
            json(text)[0],
            serde_json::json!({"base": {"x": 1, "y": 2}, "m": {"y": 3, "x": 1}, "name": "web", "ref": "web"})
        );
    }

    #[test]
    fn plain_and_quoted_scalars() {
        let docs = json("a: 80\nb: \"80\"\nc: 1.5\nd: yes\ne: ~\nf: true\ng: 0x1F\nh: 1.2.3\n");
        assert_eq!(
            docs[0],
            serde_json::json!({"a": 80, "b": "80", "c": 1.5, "d": "yes", "e": null, "f": true, "g": 31, "h": "1.2.3"})
        );
    }

    #[test]
    fn positions_of_fields() {
        let text = "kind: X\nspec:\n  rules:\n    - port: 80\n      name: a\n";
        let doc = &parse_documents(text).expect("valid")[0];
        let mut index = PosIndex::default();
        doc.to_json(&mut index);
        assert_eq!(
            index.find("spec.rules[0].name"),
            Some(Pos { line: 5, col: 7 })
        );
        assert_eq!(
            index.find("spec.rules[0].missing"),
            Some(Pos { line: 4, col: 7 })
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse_documents("a: 1\nb: [1, 2\n").expect_err("unterminated");
        assert_eq!(err.pos.line, 3);
        // Both places: where the error was found, and where the open bracket is.
        assert!(
            err.message
                .ends_with("(in the flow sequence that started at 2:4)"),
            "{err}"
        );
        let err = parse_documents("metadata:\n  labels: {a: 1,\n    b: [x]\nspec: 1\n")
            .expect_err("unterminated");
        assert!(
            err.message
                .ends_with("(in the flow mapping that started at 2:11)"),
            "{err}"
        );
        let err = parse_documents("a: 'x\n").expect_err("unterminated quote");
        assert!(!err.message.contains("started at"), "{err}");
        let err = parse_documents("a: 1\na: 2\n").expect_err("duplicate");
        assert_eq!(err.to_string(), "2:1: duplicate key `a`");
    }

    #[test]
    fn alias_bomb_is_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse_documents(&text).expect_err("bounded");
        assert!(err.message.contains("nodes"), "{err}");
    }
}
