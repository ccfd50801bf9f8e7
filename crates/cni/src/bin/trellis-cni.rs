//! `trellis-cni`: the CNI plugin binary. Everything but logging setup is
//! [`cni::plugin_main`], so `trellis cni` can serve the same protocol. Logs go to stderr,
//! filtered by `TRELLIS_CNI_LOG` (default `warn`); stdout carries only the protocol.

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRELLIS_CNI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    cni::plugin_main()
}
