//! One running instance per job. The instance that starts takes a session advisory lock named
//! after the job, on a connection it keeps for its whole life ([`JobLock`]): a second instance
//! finds the lock taken and stops, naming the holder. Because a lock can be lost while its
//! holder goes on (the connection dropped, the server restarted), every start also bumps the
//! job's *generation* in `job_instances`, and every checkpoint transaction checks that the row
//! still carries its own ([`check_generation`]): the commit of a zombie, an instance another
//! has replaced, fails with [`Fenced`] instead of landing.

use anyhow::{Result, bail};
use postgres::Client;

/// The job's instances: the generation of the latest, which every checkpoint checks.
pub(super) const INSTANCE_TABLE: &str = "
CREATE TABLE IF NOT EXISTS public.job_instances (
    job text PRIMARY KEY, generation bigint NOT NULL, holder text NOT NULL,
    started_at timestamptz NOT NULL, last_commit_at timestamptz);
";

/// The commit of an instance that a newer one of the same job has replaced.
#[derive(Debug, thiserror::Error)]
#[error("job `{job}` was taken over by a newer instance (generation {current}, this one is {mine}): not committing")]
pub struct Fenced {
    pub job: String,
    pub mine: i64,
    pub current: i64,
}

/// The advisory lock of a job, held while this value lives (the session holds it).
pub struct JobLock {
    _client: Client,
}

/// The lock's key: one 64-bit number per job name.
const LOCK_KEY: &str = "hashtextextended('clickstay job:' || $1, 0)";

/// Takes the lock of `job` on a connection of its own, or says who holds it.
pub(super) fn lock_job(url: &str, job: &str) -> Result<JobLock> {
    let mut client = super::commit::connect(url, job)?;
    let holder = format!("clickstay run job={job} host={} pid={}", hostname(), std::process::id());
    client.execute("SELECT set_config('application_name', $1, false)", &[&holder])?;
    let taken: bool = client.query_one(&format!("SELECT pg_try_advisory_lock({LOCK_KEY})"), &[&job])?.get(0);
    if !taken {
        let held_by = lock_holder(&mut client, job)?.unwrap_or_else(|| "another session".to_string());
        bail!("job `{job}` is already running ({held_by}); stop it first, or give this one another --job");
    }
    Ok(JobLock { _client: client })
}

/// Who holds the lock of `job`: its session's application name, address and start.
fn lock_holder(client: &mut Client, job: &str) -> Result<Option<String>> {
    let row = client.query_opt(
        &format!(
            "SELECT a.application_name, coalesce(host(a.client_addr), 'local'), a.backend_start::text, a.pid
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND ((l.classid::bigint << 32) | l.objid::bigint) = {LOCK_KEY}"
        ),
        &[&job],
    )?;
    Ok(row.map(|r| {
        let (name, address, since, pid): (String, String, String, i32) = (r.get(0), r.get(1), r.get(2), r.get(3));
        format!("held by `{name}` from {address}, server pid {pid}, since {since}")
    }))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Makes this start the job's newest instance: its generation, one more than the last.
pub(super) fn next_generation(client: &mut Client, job: &str) -> Result<i64> {
    let holder = format!("host={} pid={}", hostname(), std::process::id());
    let row = client.query_one(
        "INSERT INTO public.job_instances (job, generation, holder, started_at) VALUES ($1, 1, $2, now())
         ON CONFLICT (job) DO UPDATE SET generation = job_instances.generation + 1,
           holder = EXCLUDED.holder, started_at = EXCLUDED.started_at
         RETURNING generation",
        &[&job, &holder],
    )?;
    Ok(row.get(0))
}

/// Inside a checkpoint's transaction: fails with [`Fenced`] unless `generation` is still the
/// job's newest. The row lock taken here serialises the check with a newer instance's start.
pub(super) fn check_generation(tx: &mut postgres::Transaction<'_>, job: &str, generation: i64) -> Result<()> {
    let row = tx.query_opt(
        "UPDATE public.job_instances SET last_commit_at = now() WHERE job = $1 RETURNING generation",
        &[&job],
    )?;
    let current: i64 = row.map_or(0, |r| r.get(0));
    if current != generation {
        return Err(Fenced { job: job.to_string(), mine: generation, current }.into());
    }
    Ok(())
}

/// Whether `error` is a [`Fenced`] commit (retrying it cannot help).
pub(super) fn is_fenced(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.downcast_ref::<Fenced>().is_some())
}
