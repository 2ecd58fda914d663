//! Starting and stopping the throwaway services with the repository's scripts
//! (`scripts/postgres.sh`, `scripts/broker.sh`), for the tests' `pg.rs` and `broker.rs` and for
//! `benches/stream.rs`.
//!
//! Include it with `#[path = "common/scripts.rs"] mod scripts;` beside `pg` or `broker` (from a
//! benchmark: `#[path = "../tests/common/scripts.rs"]`).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// Runs `scripts/NAME ARGS...` (e.g. `postgres.sh start DIR`) and returns its one line of
/// stdout (a URL, or bootstrap servers). The script's progress goes to `stderr`:
/// `Stdio::piped()` keeps it for the error if the script fails, `Stdio::inherit()` shows it.
pub fn run_script(name: &str, args: &[&str], stderr: Stdio) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name);
    let output = Command::new(&path)
        .args(args)
        .stderr(stderr)
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    ensure!(
        output.status.success(),
        "scripts/{name} {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout).with_context(|| format!("scripts/{name} printed no UTF-8"))?.trim().to_string())
}
