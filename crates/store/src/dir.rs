//! The directory source: a tree of YAML manifests laid out as Flux and kustomize lay them out.
//!
//! Rules, in the order they apply to each directory:
//! - A directory with a `kustomization.yaml` loads the files its `resources` (and
//!   `components`) list, follows listed directories and paths outside it (`../../components/x`),
//!   and generates the ConfigMaps and Secrets of `configMapGenerator` / `secretGenerator`.
//!   YAML files beside it that it does not list are not served: they are reported as excluded
//!   (after a syntax check), as kustomize would leave them out.
//! - A directory without one loads every `*.yaml` / `*.yml` file in it.
//! - Subdirectories are always walked: in a Flux repository they are reached through Flux
//!   Kustomizations (`ks.yaml`), not through kustomize `resources`.
//!
//! An object's namespace is its own `metadata.namespace`, else the nearest enclosing
//! kustomization's `namespace`, else the `targetNamespace` of a Flux Kustomization whose
//! `spec.path` is an enclosing directory, else the Namespace declared by a `namespace.yaml`-style
//! file in an enclosing directory (the `apps/<namespace>/<app>/` layout), else the default
//! namespace. Flux `${VAR}` substitution runs on every object unless it carries the
//! `kustomize.toolkit.fluxcd.io/substitute: disabled` annotation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::snapshot::{Diagnostic, RawObject, Severity, Snapshot};
use model::subst::{Vars, substitute};
use model::yaml::{self, Node, Pos, PosIndex};
use model::{ObjectKey, Source};
use serde::Deserialize;

/// Files larger than this are not read (a manifest is kilobytes; this guards against pointing
/// `-f` at a data directory).
pub const FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Directory depth bound (symlink loops are also cut by remembering visited directories).
pub const DIR_DEPTH_MAX: usize = 64;

const KUSTOMIZATION_NAMES: &[&str] = &["kustomization.yaml", "kustomization.yml", "Kustomization"];
const SUBSTITUTE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/substitute";

/// How to read a tree.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub vars: Vars,
    /// An undefined `${VAR}` is an error instead of a warning.
    pub strict_vars: bool,
    /// Namespace for namespaced objects nothing else places.
    pub default_namespace: String,
    /// Files inside the tree that are not manifests (the vars file itself).
    pub ignore: Vec<PathBuf>,
    /// Kinds the Kubernetes source does not watch (a component that needs no Secrets is not
    /// granted them); they count as absent.
    pub skip_kinds: Vec<String>,
    /// How much of each kind the Kubernetes source holds (see [`crate::kubernetes`]).
    pub kind_bound: crate::kubernetes::KindBound,
}

/// A file that was read but is not served, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Excluded {
    pub file: PathBuf,
    pub reason: String,
    pub objects: usize,
}

/// The result of reading a tree.
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub snapshot: Snapshot,
    /// Every file read (served or excluded), for the watcher and the summary.
    pub files: Vec<PathBuf>,
    pub excluded: Vec<Excluded>,
    /// What the API server holds of each object beyond its spec (generation, status), for
    /// the status writer. Empty for a directory.
    pub observed: BTreeMap<model::ObjectKey, Observed>,
    /// The generation a shared source published ([`crate::state::manifests`]); none for a
    /// directory or the Kubernetes API.
    pub generation: Option<u64>,
}

/// An object's generation and its status as the API server has them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub generation: Option<i64>,
    pub status: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    config_map_generator: Vec<Generator>,
    #[serde(default)]
    secret_generator: Vec<Generator>,
    #[serde(default)]
    generator_options: Option<GeneratorOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Generator {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    literals: Vec<String>,
    #[serde(default)]
    envs: Vec<String>,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    options: Option<GeneratorOptions>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeneratorOptions {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Reads every root (directory or file) into one snapshot.
pub fn load(roots: &[PathBuf], opts: &Options) -> Load {
    let Documents {
        raws,
        diagnostics,
        files,
        excluded,
    } = documents(roots, opts);
    Load {
        snapshot: Snapshot::build(raws, diagnostics),
        files,
        excluded,
        observed: BTreeMap::new(),
        generation: None,
    }
}

/// What a tree holds before typing: every document with where it was written.
#[derive(Debug, Default)]
pub struct Documents {
    pub raws: Vec<RawObject>,
    pub diagnostics: Vec<Diagnostic>,
    pub files: Vec<PathBuf>,
    pub excluded: Vec<Excluded>,
}

/// Reads every root (directory or file) into its documents (what [`load`] types).
pub fn documents(roots: &[PathBuf], opts: &Options) -> Documents {
    let mut l = Loader {
        opts,
        raws: Vec::new(),
        diags: Vec::new(),
        seen_files: HashSet::new(),
        seen_dirs: HashSet::new(),
        loaded_files: HashSet::new(),
        templates: Vec::new(),
        files: Vec::new(),
        excluded: Vec::new(),
        flux_targets: HashMap::new(),
    };
    for root in roots {
        l.scan_flux(root, 0);
    }
    for root in roots {
        let ctx = Ctx { namespace: None };
        if root.is_dir() {
            l.walk(root, &ctx, 0);
        } else if root.is_file() {
            l.file(root, &ctx);
        } else {
            l.diags.push(Diagnostic {
                severity: Severity::Error,
                file: Arc::new(root.clone()),
                pos: Pos::default(),
                object: None,
                message: "no such file or directory".into(),
            });
        }
    }
    let Loader {
        raws,
        diags,
        files,
        mut excluded,
        templates,
        ..
    } = l;
    for (file, pos, var) in templates {
        excluded.push(Excluded {
            file,
            reason: format!("document at line {} is a template: its metadata.name holds the undefined variable {var}", pos.line),
            objects: 1,
        });
    }
    Documents {
        raws,
        diagnostics: diags,
        files,
        excluded,
    }
}

struct Loader<'a> {
    opts: &'a Options,
    raws: Vec<RawObject>,
    diags: Vec<Diagnostic>,
    seen_files: HashSet<PathBuf>,
    seen_dirs: HashSet<PathBuf>,
    loaded_files: HashSet<PathBuf>,
    /// Documents whose name holds an undefined variable: templates, not objects.
    templates: Vec<(PathBuf, Pos, String)>,
    files: Vec<PathBuf>,
    excluded: Vec<Excluded>,
    /// Directories named by Flux Kustomizations' `spec.path`, with their targetNamespace.
    flux_targets: HashMap<PathBuf, String>,
}

#[derive(Clone, Debug)]
struct Ctx {
    /// The namespace inferred for objects that name none.
    namespace: Option<String>,
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Directory entries split into files and subdirectories, sorted for a stable order.
fn list_dir(dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            dirs.push(path);
        } else if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    dirs.sort();
    Ok((files, dirs))
}

impl Loader<'_> {
    fn diag(&mut self, severity: Severity, file: &Path, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            severity,
            file: Arc::new(file.to_path_buf()),
            pos,
            object: None,
            message: message.into(),
        });
    }

    /// First pass: finds Flux Kustomizations and the directories they point at.
    fn scan_flux(&mut self, path: &Path, depth: usize) {
        if depth > DIR_DEPTH_MAX {
            return;
        }
        if path.is_dir() {
            if let Ok((files, dirs)) = list_dir(path) {
                for f in files.iter().filter(|f| is_yaml(f)) {
                    self.scan_flux(f, depth + 1);
                }
                for d in dirs {
                    self.scan_flux(&d, depth + 1);
                }
            }
            return;
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        if !text.contains("kustomize.toolkit.fluxcd.io") {
            return;
        }
        let Ok(docs) = yaml::parse_documents(&text) else {
            return;
        };
        for d in docs {
            let is_flux = d
                .get("apiVersion")
                .and_then(Node::as_str)
                .is_some_and(|a| a.starts_with("kustomize.toolkit.fluxcd.io/"))
                && d.get("kind").and_then(Node::as_str) == Some("Kustomization");
            if !is_flux {
                continue;
            }
            let spec = d.get("spec");
            let target = spec
                .and_then(|s| s.get("targetNamespace"))
                .and_then(Node::as_str);
            let spath = spec.and_then(|s| s.get("path")).and_then(Node::as_str);
            let (Some(target), Some(spath)) = (target, spath) else {
                continue;
            };
            // spec.path is relative to the repository root: try each ancestor of this file.
            let rel = spath.trim_start_matches("./");
            for anc in path.ancestors().skip(1) {
                let cand = anc.join(rel);
                if cand.is_dir() {
                    self.flux_targets
                        .insert(canonical(&cand), target.to_string());
                    break;
                }
            }
        }
    }

    fn walk(&mut self, dir: &Path, parent: &Ctx, depth: usize) {
        let canon = canonical(dir);
        if depth > DIR_DEPTH_MAX || !self.seen_dirs.insert(canon.clone()) {
            return;
        }
        let mut ctx = parent.clone();
        if let Some(ns) = self.flux_targets.get(&canon) {
            ctx.namespace = Some(ns.clone());
        }
        let (files, dirs) = match list_dir(dir) {
            Ok(x) => x,
            Err(e) => {
                self.diag(
                    Severity::Error,
                    dir,
                    Pos::default(),
                    format!("cannot read directory: {e}"),
                );
                return;
            }
        };
        let files: Vec<PathBuf> = files.into_iter().filter(|f| !self.ignored(f)).collect();
        let kustomization = files.iter().find(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| KUSTOMIZATION_NAMES.contains(&n))
        });
        match kustomization {
            Some(k) => {
                let k = k.clone();
                let listed = self.kustomization(&k, &mut ctx, depth);
                for f in files.iter().filter(|f| is_yaml(f) && **f != k) {
                    if !listed.contains(&canonical(f)) && !self.seen_files.contains(&canonical(f)) {
                        self.exclude(f, "not listed in kustomization.yaml resources");
                    }
                }
            }
            None => {
                for f in files.iter().filter(|f| is_yaml(f)) {
                    self.file(f, &ctx);
                }
            }
        }
        // A Namespace manifest in this directory names the namespace of what is below it,
        // when nothing nearer has named one.
        let mut sub = ctx.clone();
        if sub.namespace.is_none() {
            sub.namespace = files
                .iter()
                .filter(|f| is_yaml(f))
                .find_map(|f| namespace_declared(f));
        }
        for d in dirs {
            self.walk(&d, &sub, depth + 1);
        }
    }

    /// Reads a kustomization and what it lists; returns the files it listed.
    fn kustomization(&mut self, path: &Path, ctx: &mut Ctx, depth: usize) -> HashSet<PathBuf> {
        let mut listed = HashSet::new();
        self.note_file(path);
        let Some((doc, index)) = self.read_single(path) else {
            return listed;
        };
        let k: Kustomization = match serde_json::from_value(doc) {
            Ok(k) => k,
            Err(e) => {
                self.diag(
                    Severity::Error,
                    path,
                    Pos { line: 1, col: 1 },
                    format!("kustomization: {e}"),
                );
                return listed;
            }
        };
        if let Some(ns) = &k.namespace {
            ctx.namespace = Some(ns.clone());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        for (field, list) in [("resources", &k.resources), ("components", &k.components)] {
            for (i, r) in list.iter().enumerate() {
                let pos = index.find(&format!("{field}[{i}]")).unwrap_or_default();
                if r.contains("://") || r.starts_with("github.com/") {
                    self.diag(
                        Severity::Warning,
                        path,
                        pos,
                        format!("remote resource {r} is not fetched"),
                    );
                    continue;
                }
                let target = clean_join(dir, r);
                if target.is_file() {
                    listed.insert(canonical(&target));
                    self.file(&target, ctx);
                } else if target.is_dir() {
                    self.walk(&target, ctx, depth + 1);
                } else {
                    self.diag(
                        Severity::Warning,
                        path,
                        pos,
                        format!("{field} entry {r} not found (skipped)"),
                    );
                }
            }
        }
        let options = k.generator_options.clone().unwrap_or_default();
        for (field, gens, secret) in [
            ("configMapGenerator", &k.config_map_generator, false),
            ("secretGenerator", &k.secret_generator, true),
        ] {
            for (i, g) in gens.iter().enumerate() {
                let pos = index.find(&format!("{field}[{i}]")).unwrap_or_default();
                self.generate(path, pos, g, &options, secret, ctx);
            }
        }
        listed
    }

    /// Makes the ConfigMap or Secret of one generator entry.
    fn generate(
        &mut self,
        kpath: &Path,
        pos: Pos,
        g: &Generator,
        options: &GeneratorOptions,
        secret: bool,
        ctx: &Ctx,
    ) {
        let dir = kpath.parent().unwrap_or(Path::new("."));
        let mut data = serde_json::Map::new();
        for f in &g.files {
            // `key=path` or `path` (the key is the file name).
            let (key, rel) = match f.split_once('=') {
                Some((k, p)) => (k.to_string(), p.to_string()),
                None => (
                    Path::new(f)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or(f)
                        .to_string(),
                    f.clone(),
                ),
            };
            let p = clean_join(dir, &rel);
            self.note_file(&p);
            match read_limited(&p) {
                Ok(text) => {
                    let value = if secret {
                        encode_base64(text.as_bytes())
                    } else {
                        text
                    };
                    data.insert(key, value.into());
                }
                Err(e) => self.diag(
                    Severity::Error,
                    kpath,
                    pos,
                    format!("generator {}: file {rel}: {e}", g.name),
                ),
            }
        }
        for lit in &g.literals {
            match lit.split_once('=') {
                Some((k, v)) => {
                    let v = if secret {
                        encode_base64(v.as_bytes())
                    } else {
                        v.to_string()
                    };
                    data.insert(k.to_string(), v.into());
                }
                None => self.diag(
                    Severity::Error,
                    kpath,
                    pos,
                    format!("generator {}: literal {lit:?} is not KEY=VALUE", g.name),
                ),
            }
        }
        for env in &g.envs {
            let p = clean_join(dir, env);
            self.note_file(&p);
            match read_limited(&p).map(|t| model::subst::parse_vars(&t)) {
                Ok(Ok(vars)) => {
                    for (k, v) in vars {
                        let v = if secret {
                            encode_base64(v.as_bytes())
                        } else {
                            v
                        };
                        data.insert(k, v.into());
                    }
                }
                Ok(Err(e)) => self.diag(
                    Severity::Error,
                    &p,
                    Pos::default(),
                    format!("env file: {e}"),
                ),
                Err(e) => self.diag(
                    Severity::Error,
                    kpath,
                    pos,
                    format!("generator {}: envs {env}: {e}", g.name),
                ),
            }
        }
        let mut labels = options.labels.clone();
        let mut annotations = options.annotations.clone();
        if let Some(o) = &g.options {
            labels.extend(o.labels.clone());
            annotations.extend(o.annotations.clone());
        }
        let mut obj = serde_json::json!({
            "apiVersion": "v1",
            "kind": if secret { "Secret" } else { "ConfigMap" },
            "metadata": { "name": g.name, "labels": labels, "annotations": annotations },
            "data": data,
        });
        if let Some(ns) = &g.namespace {
            obj["metadata"]["namespace"] = ns.clone().into();
        }
        if let Some(t) = &g.type_ {
            obj["type"] = t.clone().into();
        }
        let mut index = PosIndex::default();
        index.0.insert(String::new(), pos);
        self.push_raw(
            obj,
            Source {
                file: Arc::new(kpath.to_path_buf()),
                pos,
                index: Arc::new(index),
            },
            ctx,
        );
    }

    fn ignored(&self, path: &Path) -> bool {
        let c = canonical(path);
        self.opts.ignore.iter().any(|i| canonical(i) == c)
    }

    /// Adds a document, with the namespace inferred for where it was found.
    fn push_raw(&mut self, value: serde_json::Value, source: Source, ctx: &Ctx) {
        let default_namespace = ctx
            .namespace
            .clone()
            .or_else(|| Some(self.opts.default_namespace.clone()));
        self.raws.push(RawObject {
            value,
            source,
            default_namespace,
        });
    }

    fn note_file(&mut self, path: &Path) {
        if self.seen_files.insert(canonical(path)) {
            self.files.push(path.to_path_buf());
        }
    }

    /// Reads a file that holds exactly one YAML document (a kustomization).
    fn read_single(&mut self, path: &Path) -> Option<(serde_json::Value, PosIndex)> {
        let text = match read_limited(path) {
            Ok(t) => t,
            Err(e) => {
                self.diag(
                    Severity::Error,
                    path,
                    Pos::default(),
                    format!("cannot read: {e}"),
                );
                return None;
            }
        };
        match yaml::parse_documents(&text) {
            Ok(docs) => {
                let mut index = PosIndex::default();
                let value = docs
                    .first()
                    .map(|d| d.to_json(&mut index))
                    .unwrap_or(serde_json::json!({}));
                Some((value, index))
            }
            Err(e) => {
                self.diag(Severity::Error, path, e.pos, e.message);
                None
            }
        }
    }

    /// Parses a file that is not served, to report syntax errors, and records why.
    fn exclude(&mut self, path: &Path, reason: &str) {
        self.note_file(path);
        let objects = match read_limited(path).map(|t| yaml::parse_documents(&t)) {
            Ok(Ok(docs)) => docs.len(),
            Ok(Err(e)) => {
                self.diag(
                    Severity::Warning,
                    path,
                    e.pos,
                    format!("{} (file is excluded, not served)", e.message),
                );
                0
            }
            Err(_) => 0,
        };
        self.excluded.push(Excluded {
            file: path.to_path_buf(),
            reason: reason.to_string(),
            objects,
        });
    }

    /// Reads one manifest file: every document becomes a raw object.
    fn file(&mut self, path: &Path, ctx: &Ctx) {
        // A file listed by two kustomizations is still loaded once.
        if !self.loaded_files.insert(canonical(path)) {
            return;
        }
        self.note_file(path);
        let text = match read_limited(path) {
            Ok(t) => t,
            Err(e) => {
                self.diag(
                    Severity::Error,
                    path,
                    Pos::default(),
                    format!("cannot read: {e}"),
                );
                return;
            }
        };
        let docs = match yaml::parse_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                self.diag(Severity::Error, path, e.pos, e.message);
                return;
            }
        };
        let file = Arc::new(path.to_path_buf());
        for mut doc in docs {
            let pos = doc.pos;
            if doc.get("kind").is_none() && doc.get("apiVersion").is_none() {
                // Not a Kubernetes object (a config file beside manifests): counted, not read.
                let mut index = PosIndex::default();
                let value = doc.to_json(&mut index);
                self.raws.push(RawObject {
                    value,
                    source: Source {
                        file: file.clone(),
                        pos,
                        index: Arc::new(index),
                    },
                    default_namespace: None,
                });
                continue;
            }
            let substitute_off = doc
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .and_then(|a| a.get(SUBSTITUTE_ANNOTATION))
                .and_then(Node::as_str)
                == Some("disabled");
            let undefined = if substitute_off {
                Vec::new()
            } else {
                self.substitute(&mut doc)
            };
            let name = doc
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Node::as_str);
            if let Some(var) = name.and_then(model::validate::undefined_variable) {
                // A kustomize component or template: it only becomes an object where it is
                // included with its variables set.
                let var = var.to_string();
                self.templates.push((path.to_path_buf(), pos, var));
                continue;
            }
            self.report_undefined(&doc, &file, undefined);
            let mut index = PosIndex::default();
            let value = doc.to_json(&mut index);
            self.push_raw(
                value,
                Source {
                    file: file.clone(),
                    pos,
                    index: Arc::new(index),
                },
                ctx,
            );
        }
    }

    /// Substitutes variables in every scalar; returns the undefined ones with where they are.
    fn substitute(&self, doc: &mut Node) -> Vec<(String, Pos)> {
        let vars = &self.opts.vars;
        let mut found: Vec<(String, Pos)> = Vec::new();
        doc.map_scalars(&mut |text, pos| {
            if !text.contains("${") {
                return;
            }
            let (out, undefined) = substitute(text, vars);
            *text = out;
            found.extend(undefined.into_iter().map(|u| (u.name, pos)));
        });
        found
    }

    fn report_undefined(&mut self, doc: &Node, file: &Arc<PathBuf>, found: Vec<(String, Pos)>) {
        let strict = self.opts.strict_vars;
        let object = object_key_hint(doc);
        let mut reported = HashSet::new();
        for (name, pos) in found {
            if !reported.insert(name.clone()) {
                continue;
            }
            let (severity, tail) = if strict {
                (Severity::Error, "(--strict-vars makes this an error)")
            } else {
                (
                    Severity::Warning,
                    "and is left as written (pass it with --vars FILE)",
                )
            };
            self.diags.push(Diagnostic {
                severity,
                file: file.clone(),
                pos,
                object: object.clone(),
                message: format!("variable ${{{name}}} is not defined {tail}"),
            });
        }
    }
}

/// A best-effort identity for messages about a document before it is typed.
fn object_key_hint(doc: &Node) -> Option<ObjectKey> {
    let kind = doc.get("kind")?.as_str()?;
    let name = doc.get("metadata")?.get("name")?.as_str()?;
    let ns = doc
        .get("metadata")?
        .get("namespace")
        .and_then(Node::as_str)
        .unwrap_or("");
    let group = doc
        .get("apiVersion")
        .and_then(Node::as_str)
        .and_then(|a| a.rsplit_once('/'))
        .map(|(g, _)| g)
        .unwrap_or("");
    Some(ObjectKey::new(group, kind, ns, name))
}

/// The Namespace a file declares, if it declares exactly one and nothing else.
fn namespace_declared(path: &Path) -> Option<String> {
    let text = read_limited(path).ok()?;
    if !text.contains("Namespace") {
        return None;
    }
    let docs = yaml::parse_documents(&text).ok()?;
    let [doc] = docs.as_slice() else { return None };
    if doc.get("kind")?.as_str()? != "Namespace" || doc.get("apiVersion")?.as_str()? != "v1" {
        return None;
    }
    Some(doc.get("metadata")?.get("name")?.as_str()?.to_string())
}

/// `dir/rel` without `.` components, so that messages show the paths users wrote.
fn clean_join(dir: &Path, rel: &str) -> PathBuf {
    dir.join(rel)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > FILE_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "file is {len} bytes, more than the {FILE_BYTES_MAX} a manifest may have"
        )));
    }
    let bytes = std::fs::read(path)?;
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("file is not UTF-8"))
}

/// Standard base64 with padding (Secret `data`).
fn encode_base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(encode_base64(b""), "");
        assert_eq!(encode_base64(b"f"), "Zg==");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
        assert_eq!(encode_base64(b"foo"), "Zm9v");
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
    }
}
