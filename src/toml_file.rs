//! Reading clickstay's TOML files (dataflow specs, `workers.toml`): every error names the file.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde::de::DeserializeOwned;

/// The text of the `what` file at `path` ("dataflow spec", "config file").
pub fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Parses `text` into `Raw`, the file's TOML shape; `path` only names the file in errors.
pub fn parse<Raw: DeserializeOwned>(text: &str, path: &Path) -> Result<Raw> {
    toml::from_str(text).map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().trim_end()))
}

/// Parses `text` and turns the shape into the model with `compile`, whose error (a problem
/// naming the key) is prefixed with the file.
pub fn compile<Raw: DeserializeOwned, T>(
    text: &str,
    path: &Path,
    compile: impl FnOnce(Raw, &Path) -> Result<T, String>,
) -> Result<T> {
    compile(parse(text, path)?, path).map_err(|problem| anyhow!("{}: {problem}", path.display()))
}
