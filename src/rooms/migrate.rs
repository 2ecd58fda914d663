//! Versioned schema migrations, applied by `clickstay rooms migrate` to every shard.
//!
//! Each migration runs once per database, in one transaction with its `schema_migration`
//! row, under an advisory lock: running `migrate` twice, or from two processes at once, is
//! harmless.

use anyhow::{Context, Result};
use tracing::info;

use super::shards::Shards;

/// One schema change: a version number (never reused) and its SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Append new ones; never edit one that has shipped.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial", sql: include_str!("migrations/0001_initial.sql") },
    Migration { version: 2, name: "view", sql: include_str!("migrations/0002_view.sql") },
    Migration { version: 3, name: "claims", sql: include_str!("migrations/0003_claims.sql") },
    Migration { version: 4, name: "trips", sql: include_str!("migrations/0004_trips.sql") },
];

/// Key of the advisory lock that serialises concurrent `migrate` runs on one database.
const MIGRATION_LOCK: i64 = 0x636c_6963_6b73_7479; // "clickstay"

/// Applies the missing migrations to one database; returns the versions it applied.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<i32>> {
    let tx = client.transaction().await.context("cannot begin the migration transaction")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("SET LOCAL client_min_messages = warning").await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migration (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .context("cannot create the schema_migration table")?;
    let applied: Vec<i32> =
        tx.query("SELECT version FROM schema_migration", &[]).await?.iter().map(|row| row.get(0)).collect();
    let mut done = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tx.batch_execute(migration.sql)
            .await
            .with_context(|| format!("migration {} ({}) failed", migration.version, migration.name))?;
        tx.execute(
            "INSERT INTO schema_migration (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        done.push(migration.version);
    }
    tx.commit().await.context("cannot commit the migrations")?;
    Ok(done)
}

/// Applies the missing migrations to every shard.
pub async fn migrate_all(shards: &Shards) -> Result<()> {
    for index in 0..shards.len() {
        let mut client = shards.connect(index).await?;
        let done = migrate(&mut client).await.with_context(|| format!("shard {index}"))?;
        if done.is_empty() {
            info!(shard = index, "schema is up to date");
        } else {
            info!(shard = index, versions = ?done, "applied migrations");
        }
    }
    Ok(())
}
