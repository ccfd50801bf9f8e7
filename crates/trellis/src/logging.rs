//! The process's one tracing subscriber: text or JSON lines on stderr, filtered by `RUST_LOG`
//! (the ecosystem's variable), else `TRELLIS_LOG` (the name trellis used first, kept as an
//! alias), else a default the command chooses. The filter sits behind a reload handle so that
//! `trellis up` can change its level on SIGHUP; a filter from the environment wins over the
//! config file and is never replaced.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// How log lines are written.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (tracing-subscriber's layout: timestamp, level, fields, target).
    Json,
}

/// The installed subscriber's filter, for changing it later.
#[derive(Debug)]
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    /// The directives came from `RUST_LOG` or `TRELLIS_LOG`, which the config never overrides.
    from_env: bool,
}

/// The filter directives from the environment: `RUST_LOG`, else `TRELLIS_LOG`.
fn env_directives() -> Option<String> {
    ["RUST_LOG", "TRELLIS_LOG"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
}

/// Installs the subscriber. `default` is used when neither variable is set; directives that do
/// not parse fall back to `warn` with a line saying so.
pub fn init(format: LogFormat, default: &str) -> Logging {
    let env = env_directives();
    let from_env = env.is_some();
    let directives = env.unwrap_or_else(|| default.to_string());
    let (filter, bad) = match EnvFilter::try_new(&directives) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("warn"), Some(e)),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let text = (format == LogFormat::Text).then(|| fmt::layer().with_writer(std::io::stderr));
    let json =
        (format == LogFormat::Json).then(|| fmt::layer().json().with_writer(std::io::stderr));
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    if let Some(e) = bad {
        tracing::warn!(directives = %directives, error = %e, "log filter does not parse; using warn");
    }
    Logging {
        filter: handle,
        from_env,
    }
}

impl Logging {
    /// Replaces the filter with `directives` unless the environment set it. Returns whether
    /// the filter changed.
    pub fn set(&self, directives: &str) -> anyhow::Result<bool> {
        if self.from_env {
            return Ok(false);
        }
        let f = EnvFilter::try_new(directives)
            .map_err(|e| anyhow::anyhow!("log level {directives:?}: {e}"))?;
        self.filter
            .reload(f)
            .map_err(|e| anyhow::anyhow!("cannot change the log filter: {e}"))?;
        Ok(true)
    }
}
