//! The manifests every node serves, kept in the state backend so that every agent compiles the
//! same generation (`trellis state publish`, the lab's supervisor), and read back as a
//! [`crate::watch::Watch`] (an agent's `source: state`).
//!
//! A generation is the objects as the publisher's loader read them (Kustomizations, Flux
//! substitutions and generators already applied), in chunks of at most [`CHUNK_BYTES`] (etcd
//! refuses requests over 1.5 MiB), under a prefix of the publish attempt's own
//! (`manifests/chunks/<generation>-<nonce>/`, each chunk created only if absent), and one head
//! key `manifests/current` naming the generation, its prefix, its chunk count and their
//! digest. A publish writes its chunks first, then swaps the head at the revision it read (so
//! two publishers never interleave; the loser deletes only its own chunks), then deletes every
//! other chunk. A reader reads the head, then its chunks, and checks their count and digest;
//! chunks gone under it (a publish in between) make it read the head again. Readers therefore
//! only see whole generations, and the generation number only grows (a first publish, or one
//! after the head was removed, starts from the store's revision).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use model::snapshot::RawObject;
use serde::{Deserialize, Serialize};

use super::{Backend, Error, Location, alloc::ROOT};
use crate::dir::{Load, Options};

/// The largest chunk written (half of trellis's value bound: a chunk is JSON text).
pub const CHUNK_BYTES: usize = 512 * 1024;
/// The most chunks a generation may have (256 MiB of objects).
pub const CHUNKS_MAX: usize = 512;
/// How many times a publish or a read starts over when another publish overtakes it.
const ATTEMPTS_MAX: usize = 8;
/// How long a watcher waits before trying an unreachable backend again.
const RETRY: Duration = Duration::from_secs(1);

fn head_key() -> String {
    format!("{ROOT}manifests/current")
}

fn chunks_root() -> String {
    format!("{ROOT}manifests/chunks/")
}

/// A publish attempt's own chunk prefix: its generation and a nonce no other attempt has.
fn chunks_prefix(generation: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{}{generation}-{:016x}/", chunks_root(), h.finish())
}

/// What `manifests/current` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    pub generation: u64,
    /// Where its chunks are (`chunk_prefix` + `00000`, `00001`, ...).
    pub chunk_prefix: String,
    pub chunks: usize,
    pub objects: usize,
    /// A digest of the chunks (a publish of the same objects changes nothing).
    pub digest: String,
}

/// One object as published: its document and where it was written.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Published {
    value: serde_json::Value,
    file: String,
    line: u32,
    col: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_namespace: Option<String>,
}

/// The outcome of a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub generation: u64,
    /// False when the backend already held these objects (nothing was written).
    pub changed: bool,
}

/// Kinds never published: the nodes' datapath reads no Secret, and the state backend is not
/// a secret store.
pub const UNPUBLISHED_KINDS: [&str; 1] = ["Secret"];

fn published(r: &RawObject) -> bool {
    let kind = r.value.get("kind").and_then(serde_json::Value::as_str);
    !kind.is_some_and(|k| UNPUBLISHED_KINDS.contains(&k))
}

/// The documents of `roots` as a publisher hands them over; every error when the tree does
/// not load cleanly (nothing is published then, and the last generation keeps serving).
pub fn documents(
    roots: &[PathBuf],
    opts: &Options,
) -> Result<Vec<RawObject>, Vec<model::Diagnostic>> {
    let docs = crate::dir::documents(roots, opts);
    let checked = model::Snapshot::build(docs.raws.clone(), docs.diagnostics);
    if checked.has_errors() {
        return Err(checked
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == model::Severity::Error)
            .collect());
    }
    Ok(docs.raws)
}

/// The objects packed into chunks of at most [`CHUNK_BYTES`] (one object larger than that is
/// refused with where it was written), without [`UNPUBLISHED_KINDS`].
fn pack(raws: &[RawObject]) -> Result<Vec<Vec<u8>>, Error> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut cur = b"[".to_vec();
    for r in raws.iter().filter(|r| published(r)) {
        let p = Published {
            value: r.value.clone(),
            file: r.source.file.display().to_string(),
            line: r.source.pos.line,
            col: r.source.pos.col,
            default_namespace: r.default_namespace.clone(),
        };
        let one = serde_json::to_vec(&p).map_err(|e| Error::Refused(e.to_string()))?;
        if one.len() + 2 > CHUNK_BYTES {
            return Err(Error::Refused(format!(
                "{}:{}: an object of {} bytes is over the bound of {CHUNK_BYTES} bytes per chunk",
                p.file,
                p.line,
                one.len()
            )));
        }
        if cur.len() + one.len() + 2 > CHUNK_BYTES {
            cur.push(b']');
            chunks.push(std::mem::replace(&mut cur, b"[".to_vec()));
        }
        if cur.len() > 1 {
            cur.push(b',');
        }
        cur.extend_from_slice(&one);
    }
    cur.push(b']');
    chunks.push(cur);
    if chunks.len() > CHUNKS_MAX {
        return Err(Error::Refused(format!(
            "{} chunks of objects are over the bound of {CHUNKS_MAX} (CHUNKS_MAX)",
            chunks.len()
        )));
    }
    Ok(chunks)
}

/// FNV-1a over the chunks, each followed by its length: the same in every trellis version.
fn digest(chunks: &[Vec<u8>]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in chunks {
        for b in c.iter().chain(&(c.len() as u64).to_le_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// What the head key holds when read.
struct HeadRead {
    /// None: nothing published (or the head was removed).
    head: Option<Head>,
    /// The revision the head was last written at (where a swap compares; 0: absent).
    mod_revision: i64,
    /// The store's revision at the read (where a watch starts: never compacted away while
    /// the head stays unchanged; it only grows).
    revision: i64,
}

async fn head(b: &dyn Backend) -> Result<HeadRead, Error> {
    let key = head_key();
    let listing = b.list(&key).await?;
    let Some(kv) = listing.kvs.into_iter().find(|kv| kv.key == key) else {
        return Ok(HeadRead {
            head: None,
            mod_revision: 0,
            revision: listing.revision,
        });
    };
    let h: Head = serde_json::from_slice(&kv.value)
        .map_err(|e| Error::Refused(format!("{}: not a manifests head: {e}", kv.key)))?;
    Ok(HeadRead {
        head: Some(h),
        mod_revision: kv.mod_revision,
        revision: listing.revision,
    })
}

/// Deletes every key under `prefix` that `keep` does not say to keep (as listed; a key written
/// again since stays).
async fn delete_under(
    b: &dyn Backend,
    prefix: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<(), Error> {
    for kv in b.list(prefix).await?.kvs {
        if !keep(&kv.key) {
            b.delete(&kv.key, kv.mod_revision).await?;
        }
    }
    Ok(())
}

/// Publishes `raws` as the next generation, unless the backend already holds them.
pub async fn publish(b: &dyn Backend, raws: &[RawObject]) -> Result<Publish, Error> {
    let chunks = pack(raws)?;
    let digest = digest(&chunks);
    for _ in 0..ATTEMPTS_MAX {
        let current = head(b).await?;
        if let Some(h) = &current.head
            && h.digest == digest
        {
            return Ok(Publish {
                generation: h.generation,
                changed: false,
            });
        }
        // The number only grows: after the head, or from the store's revision without one.
        let generation = match &current.head {
            Some(h) => h.generation + 1,
            None => u64::try_from(current.revision).unwrap_or(0) + 1,
        };
        let prefix = chunks_prefix(generation);
        for (i, c) in chunks.iter().enumerate() {
            let key = format!("{prefix}{i:05}");
            if !b.create(&key, c, None).await? {
                return Err(Error::Refused(format!("{key}: already written")));
            }
        }
        let next = Head {
            generation,
            chunk_prefix: prefix.clone(),
            chunks: chunks.len(),
            objects: raws.iter().filter(|r| published(r)).count(),
            digest: digest.clone(),
        };
        let text = serde_json::to_vec(&next).map_err(|e| Error::Refused(e.to_string()))?;
        if b.swap(&head_key(), current.mod_revision, &text, None)
            .await?
        {
            // Published. Every other chunk (the previous generation's, and any left by an
            // attempt that failed part-way) goes; failing that only leaves garbage for the
            // next publish.
            if let Err(e) = delete_under(b, &chunks_root(), |k| k.starts_with(&prefix)).await {
                tracing::warn!(error = %e, "published; the previous generations' chunks stay until the next publish");
            }
            return Ok(Publish {
                generation,
                changed: true,
            });
        }
        // Another publisher went first: take our chunks back and start over from its head.
        delete_under(b, &prefix, |_| false).await?;
    }
    Err(Error::Refused(format!(
        "{}: other publishers overtook {ATTEMPTS_MAX} attempts",
        head_key()
    )))
}

/// A generation as read: its number, the store's revision it was read at (where a watch
/// starts) and its objects.
#[derive(Debug)]
pub struct Generation {
    pub generation: u64,
    pub revision: i64,
    pub raws: Vec<RawObject>,
}

/// Reads the current generation: `Err(revision)` when nothing is published (the store's
/// revision, where a watch for the first publish starts).
pub async fn read(b: &dyn Backend) -> Result<Result<Generation, i64>, Error> {
    for _ in 0..ATTEMPTS_MAX {
        let current = head(b).await?;
        let Some(h) = current.head else {
            return Ok(Err(current.revision));
        };
        if !h.chunk_prefix.starts_with(&chunks_root()) {
            return Err(Error::Refused(format!(
                "{}: chunks at {:?}, outside {}",
                head_key(),
                h.chunk_prefix,
                chunks_root()
            )));
        }
        let listed = b.list(&h.chunk_prefix).await?;
        let names_ok = listed.kvs.len() == h.chunks
            && listed
                .kvs
                .iter()
                .enumerate()
                .all(|(i, kv)| kv.key == format!("{}{i:05}", h.chunk_prefix));
        let values: Vec<Vec<u8>> = listed.kvs.into_iter().map(|kv| kv.value).collect();
        if !names_ok || digest(&values) != h.digest {
            // A publish replaced this generation while we read: read the new head.
            continue;
        }
        let mut raws = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let objects: Vec<Published> = serde_json::from_slice(value).map_err(|e| {
                Error::Refused(format!(
                    "{}{i:05}: not a chunk of objects: {e}",
                    h.chunk_prefix
                ))
            })?;
            raws.extend(objects.into_iter().map(|p| RawObject {
                value: p.value,
                source: model::Source {
                    file: Arc::new(PathBuf::from(p.file)),
                    pos: model::yaml::Pos {
                        line: p.line,
                        col: p.col,
                    },
                    ..model::Source::default()
                },
                default_namespace: p.default_namespace,
            }));
        }
        return Ok(Ok(Generation {
            generation: h.generation,
            revision: current.revision,
            raws,
        }));
    }
    Err(Error::Refused(format!(
        "{}: its chunks did not match it in {ATTEMPTS_MAX} reads (publishes overtaking each read, or chunks lost)",
        head_key()
    )))
}

/// A generation built into a load (the same objects give the same snapshot on every node),
/// without the kinds `opts` skips.
fn load(mut g: Generation, opts: &Options) -> Load {
    g.raws.retain(|r| {
        let kind = r.value.get("kind").and_then(serde_json::Value::as_str);
        !kind.is_some_and(|k| opts.skip_kinds.iter().any(|s| s == k))
    });
    let files: BTreeSet<PathBuf> = g
        .raws
        .iter()
        .map(|r| r.source.file.as_ref().clone())
        .collect();
    Load {
        snapshot: model::Snapshot::build(g.raws, Vec::new()),
        files: files.into_iter().collect(),
        excluded: Vec::new(),
        observed: Default::default(),
        generation: Some(g.generation),
    }
}

/// Watches the published manifests in the backend `location` names: returns once the first
/// generation is read (waiting, and saying so once, while nothing is published or the backend
/// cannot be reached), then publishes each new generation to the watch. An unreachable
/// backend keeps the current generation serving; a compacted history lists again.
pub fn watch(location: &Location, opts: &Options) -> Result<crate::watch::Watch, Error> {
    let location = location.clone();
    watch_with(
        move || {
            let location = location.clone();
            async move { super::open(&location).await }
        },
        opts,
    )
}

/// The backend an opener gives (tried again while it fails).
pub type Opened = Result<Arc<dyn Backend>, Error>;

/// [`watch`] on the backend `open` gives (a benchmark's shared in-process backend), on a
/// thread and runtime of its own.
pub fn watch_with<F, Fut>(open: F, opts: &Options) -> Result<crate::watch::Watch, Error>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Opened> + Send,
{
    let opts = opts.clone();
    let (first_tx, first_rx) = std::sync::mpsc::channel::<Result<crate::watch::Watch, Error>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("trellis-state".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = first_tx.send(Err(Error::Unavailable(e.to_string())));
                    return;
                }
            };
            rt.block_on(async move {
                tokio::select! {
                    _ = follow(open, opts, first_tx, stop_tx) => {}
                    _ = stop_rx => {}
                }
            });
        })
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    first_rx
        .recv()
        .unwrap_or_else(|_| Err(Error::Unavailable("the state source stopped".into())))
}

/// Says each kind of trouble once, and when it is over.
#[derive(Default)]
struct Said(Option<String>);

impl Said {
    fn say(&mut self, what: Option<String>) {
        if what == self.0 {
            return;
        }
        match &what {
            Some(w) => tracing::warn!(problem = %w, "published manifests"),
            None => tracing::info!("published manifests: read again"),
        }
        self.0 = what;
    }
}

async fn follow<F, Fut>(
    open: F,
    opts: Options,
    first_tx: std::sync::mpsc::Sender<Result<crate::watch::Watch, Error>>,
    stop_tx: tokio::sync::oneshot::Sender<()>,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Opened>,
{
    let mut said = Said::default();
    let b = loop {
        match open().await {
            Ok(b) => break b,
            Err(e) => {
                said.say(Some(e.to_string()));
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    // The first generation: waited for.
    let first = loop {
        match read(b.as_ref()).await {
            Ok(Ok(g)) => break g,
            Ok(Err(_)) => said.say(Some(
                "none published yet (publish them with `trellis state publish`); waiting".into(),
            )),
            Err(e) => said.say(Some(e.to_string())),
        }
        tokio::time::sleep(RETRY).await;
    };
    said.say(None);
    let mut generation = first.generation;
    let mut revision = first.revision;
    let (watch, publisher) =
        crate::watch::Watch::from_source(load(first, &opts), Box::new(stop_tx));
    if first_tx.send(Ok(watch)).is_err() {
        return;
    }
    loop {
        // Watch the head from the revision read; any change (or a lost watch) reads again.
        let ended = match b.watch(&head_key(), revision).await {
            Ok(mut w) => w.events.recv().await,
            Err(e) => Some(Err(e)),
        };
        if let Some(Err(e)) = &ended
            && !matches!(e, Error::Compacted(_))
        {
            said.say(Some(e.to_string()));
            tokio::time::sleep(RETRY).await;
        }
        match read(b.as_ref()).await {
            Ok(Ok(g)) => {
                said.say(None);
                revision = g.revision;
                if g.generation != generation {
                    generation = g.generation;
                    if !publisher.publish(load(g, &opts)) {
                        return;
                    }
                }
            }
            // Removed: keep serving what we have (an empty cluster is never inferred).
            Ok(Err(now)) => {
                said.say(Some(
                    "the published manifests are gone; keeping the last generation".into(),
                ));
                revision = now;
            }
            Err(e) => {
                said.say(Some(e.to_string()));
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::Memory;
    use super::*;

    fn raws(n: usize, pad: usize) -> Vec<RawObject> {
        (0..n)
            .map(|i| {
                let text = format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i}\ndata:\n  pad: {}\n",
                    "x".repeat(pad)
                );
                RawObject::from_yaml(&text, &format!("m/c{i}.yaml"), "apps")
                    .expect("yaml")
                    .remove(0)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_generation_reads_back_whole_across_chunks_and_only_grows() {
        let b = Memory::default();
        assert!(read(&b).await.expect("read").is_err());
        // ~3 MiB: several chunks.
        let many = raws(300, 10_000);
        let p = publish(&b, &many).await.expect("publish");
        assert_eq!(
            p,
            Publish {
                generation: 1,
                changed: true
            }
        );
        let g = read(&b).await.expect("read").expect("published");
        let first_prefix = head(&b)
            .await
            .expect("head")
            .head
            .expect("a head")
            .chunk_prefix;
        assert_eq!(g.generation, 1);
        assert_eq!(g.raws.len(), 300);
        assert_eq!(g.raws[299].value["metadata"]["name"], "c299");
        assert_eq!(g.raws[7].source.file.display().to_string(), "m/c7.yaml");
        assert_eq!(g.raws[7].default_namespace.as_deref(), Some("apps"));
        let chunks = b.list(&first_prefix).await.expect("list").kvs.len();
        assert!(chunks > 4, "{chunks} chunks");
        // The same objects again: nothing written.
        let again = publish(&b, &many).await.expect("again");
        assert!(!again.changed);
        // Fewer: generation 2, and generation 1's chunks are gone.
        let p = publish(&b, &many[..10]).await.expect("fewer");
        assert_eq!(p.generation, 2);
        assert!(b.list(&first_prefix).await.expect("list").kvs.is_empty());
        // Only the current generation's chunks are left.
        let left = b.list(&chunks_root()).await.expect("list").kvs;
        assert_eq!(left.len(), 1, "one chunk of 10 objects");
        // A head that names chunks that are not all there (a garbled store) is an error, not a
        // generation.
        assert!(
            b.delete(&left[0].key, left[0].mod_revision)
                .await
                .expect("delete")
        );
        let e = read(&b).await.expect_err("chunks missing");
        assert!(e.to_string().contains("did not match"), "{e}");
        let p = publish(&b, &many[..20]).await.expect("republish");
        assert_eq!(p.generation, 3);
        let l = load(
            read(&b).await.expect("read").expect("some"),
            &Options::default(),
        );
        assert_eq!(l.generation, Some(3));
        assert_eq!(
            l.snapshot.config_maps.len(),
            20,
            "repaired by the next publish"
        );
    }

    #[tokio::test]
    async fn an_object_over_the_chunk_bound_is_refused_with_its_file() {
        let b = Memory::default();
        let e = publish(&b, &raws(1, CHUNK_BYTES)).await.expect_err("big");
        assert!(e.to_string().contains("m/c0.yaml:1"), "{e}");
        assert!(read(&b).await.expect("read").is_err(), "nothing published");
    }
}
