//! The log on stderr: no colour codes in a pipe, and `--log-format json` gives one JSON object
//! a line with a level and a message. No services needed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_clickstay");

/// `clickstay launch` of a replay of a small file on a one-process cluster (launch logs each
/// process it starts), with `log_args` given to launch only (its processes log as it does); its
/// stderr, piped.
fn quick_launch(log_args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.csv");
    let generated =
        Command::new(BIN).args(["gen", "--events", "2000", "--format", "csv", "--out"]).arg(&events).output();
    assert!(generated.unwrap().status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("workers.toml");
    std::fs::write(&config, format!("[cluster]\nprocesses = [\"127.0.0.1:{port}\"]\nthreads = 1\n")).unwrap();
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/ad_clicks.toml");
    let output = Command::new(BIN)
        .args(log_args)
        .arg("launch")
        .arg("--config")
        .arg(&config)
        .args(["--", "replay", "--dataflow", spec, "--input"])
        .arg(&events)
        .arg("--out")
        .arg(dir.path().join("out"))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("started"), "launch logged nothing: the test proves nothing\n{stderr}");
    stderr
}

#[test]
fn the_text_log_in_a_pipe_has_no_colour_codes() {
    let stderr = quick_launch(&[]);
    assert!(!stderr.contains("\x1b["), "an ANSI escape in a pipe:\n{stderr:?}");
}

#[test]
fn the_json_log_is_one_object_a_line_with_level_and_message() {
    let stderr = quick_launch(&["--log-format", "json"]);
    let mut lines = 0;
    for line in stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(value["level"].is_string(), "no level: {line}");
        assert!(value["message"].is_string(), "no message: {line}");
        lines += 1;
    }
    assert!(lines > 0, "nothing was logged: the test proves nothing");
}

/// The failing job's error, as the last JSON line of `command` with `--log-format json`.
fn json_error(mut command: Command) -> serde_json::Value {
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    for line in stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        if value["level"] == "ERROR" && value["message"].as_str().unwrap().contains("nonexistent") {
            return value;
        }
    }
    panic!("no error naming the missing file:\n{stderr}");
}

#[test]
fn a_failure_is_logged_as_json_too() {
    let replay = ["replay", "--dataflow", "/nonexistent.toml", "--input", "/nonexistent.csv", "--out", "/tmp/unused"];
    let mut alone = Command::new(BIN);
    alone.args(["--log-format", "json"]).args(replay);
    json_error(alone);
    // Through `launch`, the process it starts logs in JSON too.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("workers.toml");
    std::fs::write(&config, format!("[cluster]\nprocesses = [\"127.0.0.1:{port}\"]\nthreads = 1\n")).unwrap();
    let mut launched = Command::new(BIN);
    launched.args(["--log-format", "json", "launch", "--config"]).arg(&config).arg("--").args(replay);
    let error = json_error(launched);
    assert_ne!(error["target"], "clickstay::cluster", "the launcher's error, not its process's: {error}");
}
