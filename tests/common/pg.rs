//! Fresh PostgreSQL databases for integration tests.
//!
//! The server is the one named by `CLICKSTAY_TEST_PG` (a base URL such as
//! `postgres://postgres@127.0.0.1:PORT/postgres`, set by the CI test script). When it is unset,
//! `scripts/postgres.sh start` is run once per test binary, so plain `cargo test` works on a
//! developer machine. Every call to [`fresh_database`] creates a new, uniquely named database,
//! so tests run in parallel and can be re-run without cleaning up.
//!
//! Include it with `#[path = "common/pg.rs"] mod pg;` next to `#[path = "common/scripts.rs"]
//! mod scripts;`.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The base URL of the test server, starting one if `CLICKSTAY_TEST_PG` is unset.
pub fn base_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("CLICKSTAY_TEST_PG") {
            return url.trim().to_string();
        }
        super::scripts::run_script("postgres.sh", &["start"], Stdio::piped())
            .unwrap_or_else(|error| panic!("{error:#}"))
    })
    .clone()
}

/// The URL of database `name` on the test server.
pub fn url_of(name: &str) -> String {
    let base = base_url();
    let cut = base.rfind('/').expect("base URL has no database part");
    let query = base[cut..].find('?').map(|q| &base[cut + q..]).unwrap_or("");
    format!("{}/{name}{query}", &base[..cut])
}

/// Creates a new empty database whose name starts with `prefix` and returns its URL.
pub async fn fresh_database(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    assert!(prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000_000;
    let name = format!("{prefix}_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let (client, connection) = tokio_postgres::connect(&base_url(), tokio_postgres::NoTls)
        .await
        .expect("cannot connect to the test PostgreSQL server");
    tokio::spawn(connection);
    // A database name cannot be a bind parameter; `name` is built above from [a-z0-9_] only.
    // CREATE DATABASE fails while another session copies template1 at the same moment: retry.
    for attempt in 1.. {
        match client.batch_execute(&format!("CREATE DATABASE {name}")).await {
            Ok(()) => break,
            Err(error) if attempt < 20 => {
                eprintln!("CREATE DATABASE {name} failed ({error}); retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(error) => panic!("cannot create database {name}: {error}"),
        }
    }
    url_of(&name)
}

/// A client connected to `url` (its connection runs on the current runtime).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// The server processes streaming database `name`'s changes to a view (its logical WAL
/// senders), waiting up to 10 s for one.
pub async fn wal_senders(name: &str) -> Vec<i32> {
    let admin = connect(&base_url()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' AND datname = $1
                   AND application_name LIKE 'clickstay cdc%'",
                &[&name],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !pids.is_empty() || std::time::Instant::now() > deadline {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Freezes (SIGSTOP) or thaws (SIGCONT) the processes `pids`, as a frozen host would.
pub fn signal_all(pids: &[i32], signal: i32) {
    for pid in pids {
        assert_eq!(unsafe { libc::kill(*pid, signal) }, 0, "cannot signal process {pid}");
    }
}

/// Restarts the test PostgreSQL server in place (same data, same port).
pub fn restart_server() {
    let dir = std::env::var("CLICKSTAY_PG_DIR").unwrap_or_else(|_| "/tmp/clickstay-pg".into());
    let data = format!("{dir}/data");
    let pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl";
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", pg_ctl]);
        c
    } else {
        std::process::Command::new(pg_ctl)
    };
    let status = command.args(["restart", "-m", "fast", "-w", "-D", &data]).stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "cannot restart PostgreSQL in {data}");
}
