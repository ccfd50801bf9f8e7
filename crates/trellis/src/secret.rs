//! Secrets for the commands: from a file named by a flag, else from an environment variable;
//! never a flag's own value, which any user of the machine sees in `ps`.

use std::path::Path;

use anyhow::Context;

/// The secret in `file` (trimmed), else in `$env`; `None` when neither is set. An empty
/// file is an error (a token that is nothing would turn authentication off).
pub fn read(file: Option<&Path>, env: &str) -> anyhow::Result<Option<String>> {
    if let Some(p) = file {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the secret file {}", p.display()))?;
        let t = text.trim();
        anyhow::ensure!(!t.is_empty(), "the secret file {} is empty", p.display());
        return Ok(Some(t.to_string()));
    }
    Ok(std::env::var(env)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty()))
}
