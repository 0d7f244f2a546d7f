//! The run ledger (`invoice_runs`) and run claims.
//!
//! A run executes only under a claim: a compare-and-set on `claimed_by` / `lease_expires_at`
//! evaluated with the database's clock, so nodes need no clock agreement. The lease is
//! renewed — and the claim re-checked — inside every invoice transaction ([`fence`]), so a
//! process that lost its claim cannot commit.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::codec::{Codec, get};
use super::{Context, Store, StoreError};
use crate::config::Backend;
use crate::schedule::{Period, PlannedRun, RunKey, Schedule};

/// A run's status in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Missed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Missed => "missed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Missed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// One row of `invoice_runs`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RunRow {
    pub id: i64,
    pub tenant_id: i64,
    pub schedule: String,
    pub key: RunKey,
    pub period: Period,
    pub due_at: DateTime<Utc>,
    pub status: RunStatus,
    pub attempts: i32,
    pub claimed_by: Option<String>,
    pub invoices_created: i32,
    pub error: Option<String>,
}

/// What the due-run computation needs from the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunLedger {
    /// Keys of completed runs with instants in the window asked for.
    pub completed: HashSet<RunKey>,
    /// Run instant of the latest recorded run of any status.
    pub latest_due_at: Option<DateTime<Utc>>,
}

/// The answer to a claim attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunClaim {
    Claimed,
    /// Another live claim holds it; not a failure (§8).
    HeldBy(String),
    /// It completed meanwhile.
    Completed,
}

/// The database clock, in each dialect (SQLite's in the canonical instant text form).
fn db_now(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "clock_timestamp()",
        Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')",
    }
}

/// The database clock plus the number of seconds bound at `param`.
fn db_now_plus(backend: Backend, param: &str) -> String {
    match backend {
        Backend::Postgres => format!("(clock_timestamp() + make_interval(secs => {param}))"),
        Backend::Sqlite => {
            format!("strftime('%Y-%m-%dT%H:%M:%f000Z', 'now', '+' || {param} || ' seconds')")
        }
    }
}

pub(super) const RUN_COLUMNS: &str = "id, tenant_id, schedule,
    CAST(period_start_date AS TEXT) AS period_start_date,
    CAST(period_end_date AS TEXT) AS period_end_date,
    period_start, period_end, due_at, status, attempts, claimed_by, invoices_created, error";

impl Store {
    /// Completed runs with instants at or after `since`, and the latest recorded instant.
    pub async fn run_ledger(
        &self,
        tenant_id: i64,
        since: DateTime<Utc>,
    ) -> Result<RunLedger, StoreError> {
        let codec = Codec(self.backend);
        let rows = self
            .db
            .query_all_raw(self.statement(
                "SELECT CAST(period_start_date AS TEXT) AS period_start_date,
                        CAST(period_end_date AS TEXT) AS period_end_date
                   FROM invoice_runs
                  WHERE tenant_id = $1 AND status = 'completed' AND due_at >= $2",
                vec![tenant_id.into(), codec.instant(since)],
            ))
            .await
            .context("loading completed runs")?;
        let completed = rows.iter().map(run_key).collect::<Result<_, _>>()?;
        let latest = self
            .db
            .query_one_raw(self.statement(
                "SELECT max(due_at) AS latest FROM invoice_runs WHERE tenant_id = $1",
                vec![tenant_id.into()],
            ))
            .await
            .context("loading the latest run")?;
        let latest_due_at = match latest {
            Some(row) => codec.get_opt_instant(&row, "latest", "invoice_runs")?,
            None => None,
        };
        Ok(RunLedger {
            completed,
            latest_due_at,
        })
    }

    /// The ledgers of every tenant at once (two queries), for the daemon's start.
    pub async fn ledgers(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::HashMap<i64, RunLedger>, StoreError> {
        let codec = Codec(self.backend);
        let mut ledgers: std::collections::HashMap<i64, RunLedger> = Default::default();
        let latest = self
            .db
            .query_all_raw(self.statement(
                "SELECT tenant_id, max(due_at) AS latest FROM invoice_runs GROUP BY tenant_id",
                vec![],
            ))
            .await
            .context("loading the latest runs")?;
        for row in &latest {
            let tenant: i64 = get(row, "tenant_id", "invoice_runs")?;
            ledgers.entry(tenant).or_default().latest_due_at =
                codec.get_opt_instant(row, "latest", "invoice_runs")?;
        }
        let completed = self
            .db
            .query_all_raw(self.statement(
                "SELECT tenant_id, CAST(period_start_date AS TEXT) AS period_start_date,
                        CAST(period_end_date AS TEXT) AS period_end_date
                   FROM invoice_runs WHERE status = 'completed' AND due_at >= $1",
                vec![codec.instant(since)],
            ))
            .await
            .context("loading completed runs")?;
        for row in &completed {
            let tenant: i64 = get(row, "tenant_id", "invoice_runs")?;
            ledgers
                .entry(tenant)
                .or_default()
                .completed
                .insert(run_key(row)?);
        }
        Ok(ledgers)
    }

    fn insert_run_values(
        &self,
        tenant_id: i64,
        schedule: Schedule,
        run: &PlannedRun,
        status: RunStatus,
    ) -> Vec<Value> {
        let codec = Codec(self.backend);
        vec![
            tenant_id.into(),
            schedule.as_str().into(),
            codec.date(run.key.start_date),
            codec.date(run.key.end_date),
            codec.instant(run.period.start),
            codec.instant(run.period.end),
            codec.instant(run.instant),
            status.as_str().into(),
        ]
    }

    const INSERT_RUN: &str = "INSERT INTO invoice_runs
        (tenant_id, schedule, period_start_date, period_end_date, period_start, period_end, due_at, status)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (tenant_id, period_start_date, period_end_date) DO NOTHING";

    /// Records a missed run once; `true` when this call recorded it.
    pub async fn record_missed(
        &self,
        tenant_id: i64,
        schedule: Schedule,
        run: &PlannedRun,
    ) -> Result<bool, StoreError> {
        let values = self.insert_run_values(tenant_id, schedule, run, RunStatus::Missed);
        let result = self
            .db
            .execute_raw(self.statement(Self::INSERT_RUN, values))
            .await
            .context("recording a missed run")?;
        Ok(result.rows_affected() == 1)
    }

    /// The ledger row of a run, created `pending` when missing.
    pub async fn ensure_run(
        &self,
        tenant_id: i64,
        schedule: Schedule,
        run: &PlannedRun,
    ) -> Result<RunRow, StoreError> {
        let values = self.insert_run_values(tenant_id, schedule, run, RunStatus::Pending);
        self.db
            .execute_raw(self.statement(Self::INSERT_RUN, values))
            .await
            .context("recording a run")?;
        let codec = Codec(self.backend);
        let row = self
            .db
            .query_one_raw(self.statement(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM invoice_runs
                      WHERE tenant_id = $1 AND period_start_date = $2 AND period_end_date = $3"
                ),
                vec![
                    tenant_id.into(),
                    codec.date(run.key.start_date),
                    codec.date(run.key.end_date),
                ],
            ))
            .await
            .context("reading a run")?
            .ok_or(StoreError::BadData {
                table: "invoice_runs",
                detail: format!("run {:?} of tenant {tenant_id} vanished", run.key),
            })?;
        self.run_row(&row)
    }

    /// One run by id.
    pub async fn run(&self, id: i64) -> Result<Option<RunRow>, StoreError> {
        let row = self
            .db
            .query_one_raw(self.statement(
                &format!("SELECT {RUN_COLUMNS} FROM invoice_runs WHERE id = $1"),
                vec![id.into()],
            ))
            .await
            .context("reading a run")?;
        row.map(|r| self.run_row(&r)).transpose()
    }

    /// A tenant's runs, newest first.
    pub async fn runs_of_tenant(&self, tenant_id: i64) -> Result<Vec<RunRow>, StoreError> {
        let rows = self
            .db
            .query_all_raw(self.statement(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM invoice_runs WHERE tenant_id = $1 ORDER BY due_at DESC, id DESC"
                ),
                vec![tenant_id.into()],
            ))
            .await
            .context("listing runs")?;
        rows.iter().map(|r| self.run_row(r)).collect()
    }

    pub(super) fn run_row(&self, row: &QueryResult) -> Result<RunRow, StoreError> {
        let codec = Codec(self.backend);
        let status: String = get(row, "status", "invoice_runs")?;
        Ok(RunRow {
            id: get(row, "id", "invoice_runs")?,
            tenant_id: get(row, "tenant_id", "invoice_runs")?,
            schedule: get(row, "schedule", "invoice_runs")?,
            key: run_key(row)?,
            period: Period {
                start: codec.get_instant(row, "period_start", "invoice_runs")?,
                end: codec.get_instant(row, "period_end", "invoice_runs")?,
            },
            due_at: codec.get_instant(row, "due_at", "invoice_runs")?,
            status: RunStatus::parse(&status).ok_or_else(|| StoreError::BadData {
                table: "invoice_runs",
                detail: format!("unknown status {status:?}"),
            })?,
            attempts: get(row, "attempts", "invoice_runs")?,
            claimed_by: get(row, "claimed_by", "invoice_runs")?,
            invoices_created: get(row, "invoices_created", "invoice_runs")?,
            error: get(row, "error", "invoice_runs")?,
        })
    }

    /// Tries to claim a run for `node` for `lease`.
    pub async fn claim_run(
        &self,
        run_id: i64,
        node: &str,
        lease: Duration,
    ) -> Result<RunClaim, StoreError> {
        let now = db_now(self.backend);
        let until = db_now_plus(self.backend, "$3");
        let result = self
            .db
            .execute_raw(self.statement(
                &format!(
                    "UPDATE invoice_runs
                        SET status = 'running', claimed_by = $2, lease_expires_at = {until},
                            attempts = attempts + 1, started_at = {now}, error = NULL
                      WHERE id = $1 AND status <> 'completed'
                        AND (claimed_by IS NULL OR claimed_by = $2 OR lease_expires_at < {now})"
                ),
                vec![run_id.into(), node.into(), lease.as_secs_f64().into()],
            ))
            .await
            .context("claiming a run")?;
        if result.rows_affected() == 1 {
            return Ok(RunClaim::Claimed);
        }
        let run = self.run(run_id).await?;
        Ok(match run {
            Some(r) if r.status == RunStatus::Completed => RunClaim::Completed,
            Some(r) => RunClaim::HeldBy(r.claimed_by.unwrap_or_default()),
            None => RunClaim::HeldBy(String::new()),
        })
    }

    /// Marks a claimed run completed and releases the claim; `false` if the claim was lost.
    /// `invoices_created` counts the run's invoices over all its attempts.
    pub async fn complete_run(&self, run_id: i64, node: &str) -> Result<bool, StoreError> {
        let now = db_now(self.backend);
        let result = self
            .db
            .execute_raw(self.statement(
                &format!(
                    "UPDATE invoice_runs
                        SET status = 'completed', finished_at = {now}, claimed_by = NULL,
                            lease_expires_at = NULL, error = NULL,
                            invoices_created = (SELECT count(*) FROM invoices WHERE run_id = $1)
                      WHERE id = $1 AND claimed_by = $2"
                ),
                vec![run_id.into(), node.into()],
            ))
            .await
            .context("completing a run")?;
        Ok(result.rows_affected() == 1)
    }

    /// Marks a claimed run failed with its error and releases the claim.
    pub async fn fail_run(&self, run_id: i64, node: &str, error: &str) -> Result<(), StoreError> {
        let now = db_now(self.backend);
        self.db
            .execute_raw(self.statement(
                &format!(
                    "UPDATE invoice_runs
                        SET status = 'failed', finished_at = {now}, claimed_by = NULL,
                            lease_expires_at = NULL, error = $3
                      WHERE id = $1 AND claimed_by = $2"
                ),
                vec![run_id.into(), node.into(), error.into()],
            ))
            .await
            .context("recording a failed run")?;
        Ok(())
    }
}

impl Store {
    /// Renews a claim outside any transaction (between invoices of a long run); `false`
    /// when the claim is no longer this node's.
    pub async fn renew_claim(
        &self,
        run_id: i64,
        node: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        fence(&self.db, self, run_id, node, lease).await
    }

    /// Gives a claimed run back (status `pending`, no claim), so that any node may resume
    /// it at once: a graceful shutdown does this with the runs it cuts short.
    pub async fn release_run(&self, run_id: i64, node: &str) -> Result<(), StoreError> {
        self.db
            .execute_raw(self.statement(
                "UPDATE invoice_runs
                    SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL,
                        error = 'interrupted by shutdown'
                  WHERE id = $1 AND claimed_by = $2",
                vec![run_id.into(), node.into()],
            ))
            .await
            .context("releasing a run")?;
        Ok(())
    }
}

/// Renews the claim on a run and checks it is still ours, inside the caller's transaction:
/// `false` means the claim was lost and the transaction must not commit.
pub(crate) async fn fence(
    conn: &impl ConnectionTrait,
    store: &Store,
    run_id: i64,
    node: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let now = db_now(store.backend);
    let until = db_now_plus(store.backend, "$3");
    let result = conn
        .execute_raw(store.statement(
            &format!(
                "UPDATE invoice_runs SET lease_expires_at = {until}
                  WHERE id = $1 AND claimed_by = $2 AND lease_expires_at > {now}"
            ),
            vec![run_id.into(), node.into(), lease.as_secs_f64().into()],
        ))
        .await
        .context("renewing a run claim")?;
    Ok(result.rows_affected() == 1)
}

fn run_key(row: &QueryResult) -> Result<RunKey, StoreError> {
    let date = |col: &str| -> Result<NaiveDate, StoreError> {
        let text: String = get(row, col, "invoice_runs")?;
        text.parse().map_err(|_| StoreError::BadData {
            table: "invoice_runs",
            detail: format!("column {col}: {text:?} is not a date"),
        })
    };
    Ok(RunKey {
        start_date: date("period_start_date")?,
        end_date: date("period_end_date")?,
    })
}
