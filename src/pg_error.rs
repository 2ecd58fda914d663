//! Errors as an operator reads them, with PostgreSQL's own words.
//!
//! A `postgres`/`tokio_postgres` error says only "db error"; what the server said (SQLSTATE,
//! message, detail, hint, where) sits in the `DbError` below it in the chain, and its `Display`
//! leaves the SQLSTATE and the where out. [`Report`] prints a whole error chain on one line, the
//! statement's purpose first (the `.context(...)` of the call site) and the server's fields in
//! place of "db error": `cannot commit checkpoint 7: SQLSTATE 40P01: deadlock detected (DETAIL:
//! ...)`. Every place that prints an error for the operator (a failed command, a failed worker,
//! a retried commit, the rooms service's log) prints it through [`Report`], so no call site has to
//! remember to.

use std::error::Error;
use std::fmt;

use tokio_postgres::error::DbError;

/// An error and its causes, `: `-separated, with PostgreSQL's fields spelled out.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

/// [`Report`] of an `anyhow` error.
pub fn report(error: &anyhow::Error) -> Report<'_> {
    Report(error.as_ref())
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut causes = std::iter::successors(Some(self.0), |&cause| cause.source()).peekable();
        let mut first = true;
        while let Some(cause) = causes.next() {
            if !first {
                f.write_str(": ")?;
            }
            first = false;
            match server_error(cause) {
                Some(db) => {
                    write_db_error(f, db)?;
                    // The client error's source is the same `DbError`: said once.
                    causes.next_if(|next| next.is::<DbError>());
                }
                None => write!(f, "{cause}")?,
            }
        }
        Ok(())
    }
}

/// The server's error in `cause`, whether it is the client's error ("db error") or the
/// `DbError` itself.
fn server_error<'a>(cause: &'a (dyn Error + 'static)) -> Option<&'a DbError> {
    match cause.downcast_ref::<tokio_postgres::Error>() {
        Some(client) => client.as_db_error(),
        None => cause.downcast_ref::<DbError>(),
    }
}

fn write_db_error(f: &mut fmt::Formatter<'_>, db: &DbError) -> fmt::Result {
    write!(f, "SQLSTATE {}: {}", db.code().code(), db.message())?;
    let extras = [("DETAIL", db.detail()), ("HINT", db.hint()), ("WHERE", db.where_())];
    let mut extras = extras.iter().filter_map(|(name, value)| Some((name, (*value)?))).peekable();
    if extras.peek().is_some() {
        f.write_str(" (")?;
        for (i, (name, value)) in extras.enumerate() {
            let separator = if i == 0 { "" } else { "; " };
            write!(f, "{separator}{name}: {}", value.replace('\n', " "))?;
        }
        f.write_str(")")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    /// The test server's URL, or `None` (the test is then skipped, as `cargo test --lib` runs
    /// without services).
    fn test_server() -> Option<String> {
        let url = std::env::var("CLICKSTAY_TEST_PG").ok();
        if url.is_none() {
            eprintln!("skipped: CLICKSTAY_TEST_PG is unset");
        }
        url
    }

    fn server_failure(sql: &str, purpose: &str) -> Option<String> {
        let mut client = postgres::Client::connect(&test_server()?, postgres::NoTls).unwrap();
        let error = client.batch_execute(sql).context(purpose.to_string()).unwrap_err();
        Some(report(&error).to_string())
    }

    #[test]
    fn a_server_error_carries_sqlstate_message_and_purpose() {
        let Some(text) = server_failure("SELECT 1/0", "cannot divide the clicks") else { return };
        assert_eq!(text, "cannot divide the clicks: SQLSTATE 22012: division by zero");
    }

    #[test]
    fn detail_hint_and_where_are_reported() {
        let sql = "DO $$ BEGIN RAISE EXCEPTION 'no room' USING ERRCODE = 'P0001', DETAIL = 'hotel 7', \
                   HINT = 'try another'; END $$";
        let Some(text) = server_failure(sql, "cannot book") else { return };
        assert!(
            text.starts_with(
                "cannot book: SQLSTATE P0001: no room (DETAIL: hotel 7; HINT: try another; WHERE: PL/pgSQL"
            ),
            "{text}"
        );
        assert!(!text.contains("db error"), "{text}");
    }

    #[test]
    fn other_errors_print_their_chain() {
        let error = anyhow::anyhow!("refused").context("cannot connect").context("cannot start");
        assert_eq!(report(&error).to_string(), "cannot start: cannot connect: refused");
    }
}
