//! `trellis-cni`: the CNI plugin binary. Reads `CNI_*` from the environment and the network
//! configuration from stdin, prints the result (or the spec's error JSON, exiting 1) on
//! stdout. Logs go to stderr, filtered by `TRELLIS_CNI_LOG` (default `warn`).

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

/// Largest network configuration read from stdin; a runtime's is a few KiB.
const STDIN_BYTES_MAX: u64 = 1 << 20;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRELLIS_CNI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let command = std::env::var("CNI_COMMAND").ok();
    let mut stdin = Vec::new();
    // VERSION works without input; reading stdin from a terminal would hang.
    let read = if command.as_deref() == Some("VERSION") && std::io::stdin().is_terminal() {
        Ok(0)
    } else {
        std::io::stdin()
            .take(STDIN_BYTES_MAX)
            .read_to_end(&mut stdin)
    };
    let outcome = match read {
        Ok(_) => cni::execute(command.as_deref(), |k| std::env::var(k).ok(), &stdin),
        Err(e) => Err(cni::ErrorReply::new(
            cni::LATEST_VERSION,
            &cni::Error::Io {
                what: "reading the network configuration from stdin".into(),
                source: e,
            },
        )),
    };
    let (json, code) = match outcome {
        Ok(serde_json::Value::Null) => return ExitCode::SUCCESS,
        Ok(v) => (v.to_string(), ExitCode::SUCCESS),
        Err(reply) => {
            tracing::error!(code = reply.code, details = %reply.details, "{}", reply.msg);
            (
                serde_json::to_string(&reply).expect("error reply serializes"),
                ExitCode::FAILURE,
            )
        }
    };
    let mut out = std::io::stdout().lock();
    // Nothing useful to do if stdout is closed; the exit code still tells.
    let _ = writeln!(out, "{json}");
    code
}
