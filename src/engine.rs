//! One run, end to end: load what the rules need → apply them → persist. Shared by
//! `run-due`, `preview` (which stops before persisting) and the daemon.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{InvoiceSettings, Settings};
use crate::money::{Currency, Totals};
use crate::rules::{
    AffiliateStatus, Decision, ExistingInvoice, NewInvoice, PaymentSystem, Run, Screening, screen,
    settle,
};
use crate::schedule::{Period, PlannedRun, ScheduleSettings, TenantSchedule, due_runs};
use crate::store::{
    BatchOutcome, CreateOutcome, DecisionRow, InvoiceToCreate, RunClaim, RunLedger, RunStatus,
    Store, StoreError, TenantRow,
};
use crate::telemetry;

/// How often an affiliate is re-evaluated when its conversions keep changing under a run.
const MAX_ATTEMPTS_PER_AFFILIATE: usize = 3;
/// Invoices written per transaction (each whole, with exactly its links).
const INVOICES_PER_TRANSACTION: usize = 250;
/// Affiliates per unit of work handed to an AffiliateActor.
pub const AFFILIATES_PER_BATCH: usize = 250;

/// What the engine needs from the configuration.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub schedule: ScheduleSettings,
    pub invoice: InvoiceSettings,
    pub node_id: String,
    pub lease: Duration,
}

impl EngineSettings {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            schedule: settings.schedule,
            invoice: settings.invoice.clone(),
            node_id: settings.cluster.node_id.clone(),
            // A claim lives as long as a silent node is still counted alive: a dead node's
            // runs are taken over about when its tenants move.
            lease: settings.cluster.node_ttl,
        }
    }
}

/// A run failed; the message says where.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this node lost its claim on run {run_id}")]
    LostClaim { run_id: i64 },
    #[error(
        "affiliate {affiliate_id} {currency}: conversions kept changing during {attempts} attempts"
    )]
    Unsettled {
        affiliate_id: i64,
        currency: Currency,
        attempts: usize,
    },
    #[error("an affiliate worker is gone: {0}")]
    Worker(String),
    /// Shutdown began before this work started.
    #[error("interrupted by shutdown")]
    Interrupted,
}

/// An invoice created (or, in a preview, that would be created).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    pub invoice_id: Option<i64>,
    pub affiliate_id: i64,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub conversions_count: u64,
    pub payment_system_id: i64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// A skip, with its reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkipLine {
    pub affiliate_id: i64,
    pub currency: String,
    pub reason: &'static str,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub amount: Option<Decimal>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Completed,
    /// Another process holds its claim (not a failure).
    ClaimedElsewhere,
    /// Already completed by someone else before this process could claim it.
    AlreadyCompleted,
    Failed,
    /// Stopped by shutdown between affiliates; its claim was released for the next start.
    Interrupted,
    /// A dry run (preview).
    Previewed,
}

/// One run's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunReport {
    pub run_id: Option<i64>,
    pub tenant_id: i64,
    pub schedule: &'static str,
    pub period_start_date: NaiveDate,
    pub period_end_date: NaiveDate,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub outcome: RunOutcome,
    pub error: Option<String>,
    pub invoices: Vec<InvoiceLine>,
    pub skips: Vec<SkipLine>,
    /// Decisions by label (`created` and every reason), `no_payable_conversions` included.
    pub decisions: BTreeMap<&'static str, u64>,
    /// Payable conversions left out as bad data (affiliate not the tenant's, unreadable).
    pub bad_conversions: u64,
}

/// A run recorded as missed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MissedRun {
    pub period_start_date: NaiveDate,
    pub period_end_date: NaiveDate,
    pub due_at: DateTime<Utc>,
}

/// What happened to one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantReport {
    pub tenant_id: i64,
    pub name: String,
    /// Set when the tenant's stored settings cannot be scheduled.
    pub misconfigured: Option<String>,
    /// Set when its runs could not even be planned (the ledger was unreadable).
    pub error: Option<String>,
    pub runs: Vec<RunReport>,
    /// Runs newly recorded as missed by this call.
    pub missed: Vec<MissedRun>,
}

impl TenantReport {
    /// A report with nothing in it yet.
    pub fn new(tenant: &TenantRow) -> Self {
        Self {
            tenant_id: tenant.id,
            name: tenant.name.clone(),
            misconfigured: None,
            error: None,
            runs: Vec::new(),
            missed: Vec::new(),
        }
    }

    /// Whether anything about this tenant counts as a failure for `run-due`'s exit status.
    pub fn failed(&self) -> bool {
        self.misconfigured.is_some()
            || self.error.is_some()
            || self.runs.iter().any(|r| r.outcome == RunOutcome::Failed)
    }
}

/// A claimed run: what identifies it to the affiliates settling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunContext {
    pub run_id: i64,
    pub tenant_id: i64,
    pub run: Run,
}

/// What §3 reads of one affiliate for one run, loaded in bulk for the whole run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffiliateWork {
    pub affiliate_id: i64,
    pub status: AffiliateStatus,
    pub payment_systems: Vec<PaymentSystem>,
    pub invoices: Vec<ExistingInvoice>,
    /// Payable conversions in the whole period, per currency.
    pub totals: Vec<(Currency, Totals)>,
}

/// What settling one affiliate produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AffiliateResult {
    pub invoices: Vec<InvoiceLine>,
    pub skips: Vec<SkipLine>,
    /// Decisions by label, `no_payable_conversions` included.
    pub decisions: BTreeMap<&'static str, u64>,
}

impl AffiliateResult {
    fn count(&mut self, label: &'static str) {
        *self.decisions.entry(label).or_default() += 1;
    }
}

/// A run ready for its affiliates to be settled.
#[derive(Debug)]
pub struct PreparedRun {
    pub context: RunContext,
    report: RunReport,
    started: std::time::Instant,
    /// One unit of work per affiliate with payable conversions in the period.
    pub work: Vec<AffiliateWork>,
}

impl PreparedRun {
    /// The span every log line of this run is recorded in.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "run",
            tenant_id = self.context.tenant_id,
            run_id = self.context.run_id
        )
    }
}

/// The result of [`Engine::prepare`].
#[derive(Debug)]
pub enum Prepared {
    Ready(PreparedRun),
    /// Nothing to execute; the report says why.
    Done(RunReport),
}

/// One (affiliate, currency) decision before it is persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Planned {
    affiliate_id: i64,
    currency: Currency,
    decision: Decision,
}

/// Settles the affiliates of a prepared run: returns each affiliate's result, and whether it
/// stopped early because `cancel` fired.
#[async_trait::async_trait]
pub trait Settler: Send + Sync {
    async fn settle_all(
        &self,
        engine: &Engine,
        prepared: &PreparedRun,
        cancel: &CancellationToken,
    ) -> (Vec<Result<AffiliateResult, EngineError>>, bool);
}

/// Settles affiliates one after another (`run-due`, `preview`).
#[derive(Clone, Copy, Debug, Default)]
pub struct InTurn;

#[async_trait::async_trait]
impl Settler for InTurn {
    async fn settle_all(
        &self,
        engine: &Engine,
        prepared: &PreparedRun,
        cancel: &CancellationToken,
    ) -> (Vec<Result<AffiliateResult, EngineError>>, bool) {
        let mut results = Vec::with_capacity(prepared.work.len() / AFFILIATES_PER_BATCH + 1);
        for works in prepared.work.chunks(AFFILIATES_PER_BATCH) {
            if cancel.is_cancelled() {
                return (results, true);
            }
            let result = engine.settle(&prepared.context, works).await;
            let failed = result.is_err();
            results.push(result);
            if failed {
                break;
            }
        }
        (results, false)
    }
}

/// The engine: rules over a store.
#[derive(Clone, Debug)]
pub struct Engine {
    store: Store,
    settings: EngineSettings,
}

impl Engine {
    pub fn new(store: Store, settings: EngineSettings) -> Self {
        Self { store, settings }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// How far back the ledger must be read to know which runs due at `now` are completed.
    pub fn ledger_since(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - self.settings.schedule.catch_up_window - chrono::Duration::days(1)
    }

    /// The runs of a tenant due at `now` and the missed ones (§2), from the ledger.
    /// The ledger is read from the store unless given (the daemon loads all tenants' ledgers
    /// in bulk at start).
    pub async fn due(
        &self,
        schedule: &TenantSchedule,
        tenant_id: i64,
        now: DateTime<Utc>,
        ledger: Option<RunLedger>,
    ) -> Result<crate::schedule::DueRuns, StoreError> {
        let ledger = match ledger {
            Some(l) => l,
            None => {
                self.store
                    .run_ledger(tenant_id, self.ledger_since(now))
                    .await?
            }
        };
        Ok(due_runs(
            schedule,
            &self.settings.schedule,
            now,
            &ledger.completed,
            ledger.latest_due_at,
        ))
    }

    /// Executes every run of the tenant due at `now`, oldest first, after recording the
    /// missed ones. Errors of one run are reported in its [`RunReport`]; later runs still go.
    pub async fn run_due_for(
        &self,
        tenant: &TenantRow,
        now: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> TenantReport {
        self.run_due_with(tenant, now, None, &InTurn, cancel).await
    }

    /// As [`Engine::run_due_for`], with a ledger already loaded and the affiliates settled by
    /// `settler` (the daemon's AffiliateActors).
    pub async fn run_due_with(
        &self,
        tenant: &TenantRow,
        now: DateTime<Utc>,
        ledger: Option<RunLedger>,
        settler: &dyn Settler,
        cancel: &CancellationToken,
    ) -> TenantReport {
        let mut report = TenantReport::new(tenant);
        let schedule = match tenant.schedule() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(tenant_id = tenant.id, error = %e, "tenant misconfigured; skipped");
                report.misconfigured = Some(e.reason);
                return report;
            }
        };
        let due = match self.due(&schedule, tenant.id, now, ledger).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(tenant_id = tenant.id, error = %e, "cannot read the run ledger");
                telemetry::run_finished(false, 0.0);
                report.error = Some(e.to_string());
                return report;
            }
        };
        for missed in &due.missed {
            match self
                .store
                .record_missed(tenant.id, schedule.schedule, missed)
                .await
            {
                Ok(true) => {
                    tracing::warn!(
                        tenant_id = tenant.id,
                        period_start = %missed.key.start_date,
                        period_end = %missed.key.end_date,
                        due_at = %missed.instant,
                        "run missed: outside the catch-up window; not executed"
                    );
                    telemetry::run_missed();
                    report.missed.push(MissedRun {
                        period_start_date: missed.key.start_date,
                        period_end_date: missed.key.end_date,
                        due_at: missed.instant,
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(tenant_id = tenant.id, error = %e, "cannot record a missed run")
                }
            }
        }
        for planned in &due.due {
            if cancel.is_cancelled() {
                break;
            }
            let run = self
                .execute(tenant.id, &schedule, planned, settler, cancel)
                .await;
            report.runs.push(run);
        }
        report
    }

    /// Executes one run under a claim and reports it: prepare, settle every affiliate with
    /// `settler`, finish. When `cancel` fires, settling stops between affiliates and the
    /// claim is released so the next start resumes the run at once. Never panics.
    pub async fn execute(
        &self,
        tenant_id: i64,
        schedule: &TenantSchedule,
        planned: &PlannedRun,
        settler: &dyn Settler,
        cancel: &CancellationToken,
    ) -> RunReport {
        let prepared = match self.prepare(tenant_id, schedule, planned).await {
            Prepared::Ready(p) => p,
            Prepared::Done(report) => return report,
        };
        let span = prepared.span();
        // Keep the claim alive while the run works, also through long stretches without an
        // invoice transaction (each of which renews it too).
        let renewal = {
            let (store, node, lease) = (
                self.store.clone(),
                self.settings.node_id.clone(),
                self.settings.lease,
            );
            let run_id = prepared.context.run_id;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match store.renew_claim(run_id, &node, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(
                                run_id,
                                "claim lost while running; the run will stop at its next invoice"
                            );
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(run_id, error = %e, "cannot renew the run's claim")
                        }
                    }
                }
            })
        };
        async {
            let (results, interrupted) = settler.settle_all(self, &prepared, cancel).await;
            renewal.abort();
            self.finish(prepared, results, interrupted).await
        }
        .instrument(span)
        .await
    }

    /// Records the run, claims it and loads what its affiliates need, in a few set-based
    /// queries. `Done` when there is nothing to execute (completed, claimed elsewhere) or
    /// the preparation failed.
    pub async fn prepare(
        &self,
        tenant_id: i64,
        schedule: &TenantSchedule,
        planned: &PlannedRun,
    ) -> Prepared {
        let started = std::time::Instant::now();
        let mut report = empty_report(tenant_id, schedule, planned, RunOutcome::Completed);
        let node = self.settings.node_id.as_str();
        let row = match self
            .store
            .ensure_run(tenant_id, schedule.schedule, planned)
            .await
        {
            Ok(row) => row,
            Err(e) => return Prepared::Done(fail(report, &e.to_string())),
        };
        report.run_id = Some(row.id);
        if row.status == RunStatus::Completed {
            report.outcome = RunOutcome::AlreadyCompleted;
            return Prepared::Done(report);
        }
        match self
            .store
            .claim_run(row.id, node, self.settings.lease)
            .await
        {
            Ok(RunClaim::Claimed) => {}
            Ok(RunClaim::Completed) => {
                report.outcome = RunOutcome::AlreadyCompleted;
                return Prepared::Done(report);
            }
            Ok(RunClaim::HeldBy(holder)) => {
                tracing::info!(tenant_id, run_id = row.id, holder = %holder, "run claimed by another process; left to it");
                report.outcome = RunOutcome::ClaimedElsewhere;
                return Prepared::Done(report);
            }
            Err(e) => return Prepared::Done(fail(report, &e.to_string())),
        }
        let context = RunContext {
            run_id: row.id,
            tenant_id,
            run: Run {
                period: planned.period,
                key: planned.key,
            },
        };
        match self.load_work(tenant_id, &context.run, None).await {
            Ok((work, bad)) => {
                report.bad_conversions = bad;
                tracing::info!(
                    tenant_id,
                    run_id = row.id,
                    affiliates = work.len(),
                    "run started"
                );
                let took_over = row.status == RunStatus::Running
                    && row
                        .claimed_by
                        .as_deref()
                        .is_some_and(|holder| holder != node);
                if bad > 0 {
                    tracing::warn!(
                        tenant_id,
                        run_id = row.id,
                        bad,
                        "payable conversions left out as bad data"
                    );
                    telemetry::bad_conversions(bad);
                }
                if took_over {
                    tracing::warn!(tenant_id, run_id = row.id, previous = ?row.claimed_by, "took over a run whose claim had expired");
                    telemetry::run_taken_over();
                }
                Prepared::Ready(PreparedRun {
                    context,
                    report,
                    started,
                    work,
                })
            }
            Err(e) => {
                let message = e.to_string();
                telemetry::run_finished(false, started.elapsed().as_secs_f64());
                if let Err(e2) = self.store.fail_run(row.id, node, &message).await {
                    tracing::error!(tenant_id, run_id = row.id, error = %e2, "cannot record the failure");
                }
                Prepared::Done(fail(report, &message))
            }
        }
    }

    /// Applies §3 to one affiliate of a claimed run and persists the result: each invoice
    /// with its links in one fenced transaction; re-evaluates a currency whose conversions
    /// changed meanwhile.
    pub async fn settle(
        &self,
        context: &RunContext,
        works: &[AffiliateWork],
    ) -> Result<AffiliateResult, EngineError> {
        let mut result = AffiliateResult::default();
        let mut creations = Vec::new();
        for work in works {
            for p in self
                .decide(context.tenant_id, &context.run, work)
                .await?
                .into_iter()
                .rev()
            {
                match p.decision {
                    Decision::Create(_) => creations.push(p),
                    Decision::Skip { reason, amount } => {
                        result.count(p.decision.label());
                        if p.decision.is_recorded() {
                            result.skips.push(skip_line(&p, reason.as_str(), amount));
                        }
                    }
                }
            }
        }
        // Many invoices per transaction, each still written whole with exactly its links;
        // a batch that meets any surprise (a conversion linked or added meanwhile, an
        // invoice created meanwhile) is rolled back and redone one invoice at a time.
        for batch in creations.chunks(INVOICES_PER_TRANSACTION) {
            let requests: Vec<InvoiceToCreate> = batch
                .iter()
                .filter_map(|p| match p.decision {
                    Decision::Create(invoice) => {
                        Some(self.to_create(context, p.affiliate_id, invoice))
                    }
                    Decision::Skip { .. } => None,
                })
                .collect();
            match self.store.create_invoices(&requests).await? {
                BatchOutcome::Created(ids) => {
                    for (p, (request, id)) in batch.iter().zip(requests.iter().zip(ids)) {
                        result.count("created");
                        result
                            .invoices
                            .push(invoice_line(Some(id), p, &request.invoice));
                    }
                }
                BatchOutcome::LostClaim => {
                    return Err(EngineError::LostClaim {
                        run_id: context.run_id,
                    });
                }
                BatchOutcome::Retry => {
                    for p in batch {
                        self.settle_one(context, p.clone(), &mut result).await?;
                    }
                }
            }
        }
        Ok(result)
    }

    fn to_create(
        &self,
        context: &RunContext,
        affiliate_id: i64,
        invoice: NewInvoice,
    ) -> InvoiceToCreate<'_> {
        InvoiceToCreate {
            run_id: context.run_id,
            node_id: &self.settings.node_id,
            lease: self.settings.lease,
            tenant_id: context.tenant_id,
            affiliate_id,
            run_key: context.run.key,
            invoice,
            status: &self.settings.invoice.status,
            comment: &self.settings.invoice.comment,
        }
    }

    /// One creation in its own transaction; when the affiliate's conversions changed under
    /// it, re-evaluates that affiliate and currency (a few times, then fails the run).
    async fn settle_one(
        &self,
        context: &RunContext,
        first: Planned,
        result: &mut AffiliateResult,
    ) -> Result<(), EngineError> {
        let mut queue = vec![first];
        let mut attempts = 0usize;
        while let Some(p) = queue.pop() {
            let Decision::Create(invoice) = p.decision else {
                result.count(p.decision.label());
                if let Decision::Skip { reason, amount } = p.decision
                    && p.decision.is_recorded()
                {
                    result.skips.push(skip_line(&p, reason.as_str(), amount));
                }
                continue;
            };
            match self
                .store
                .create_invoice(&self.to_create(context, p.affiliate_id, invoice))
                .await?
            {
                CreateOutcome::Created { invoice_id } => {
                    result.count("created");
                    result
                        .invoices
                        .push(invoice_line(Some(invoice_id), &p, &invoice));
                }
                CreateOutcome::AlreadyInvoiced => {
                    result.count("already_invoiced");
                    result.skips.push(skip_line(&p, "already_invoiced", None));
                }
                CreateOutcome::LostClaim => {
                    return Err(EngineError::LostClaim {
                        run_id: context.run_id,
                    });
                }
                CreateOutcome::Mismatch { linked, sum } => {
                    attempts += 1;
                    tracing::warn!(
                        affiliate_id = p.affiliate_id,
                        currency = %p.currency,
                        counted = invoice.conversions_count,
                        linked,
                        %sum,
                        "conversions changed while invoicing; re-evaluating the affiliate"
                    );
                    if attempts >= MAX_ATTEMPTS_PER_AFFILIATE {
                        return Err(EngineError::Unsettled {
                            affiliate_id: p.affiliate_id,
                            currency: p.currency,
                            attempts,
                        });
                    }
                    let scope = Some((p.affiliate_id, p.currency));
                    let (fresh, _) = self
                        .load_work(context.tenant_id, &context.run, scope)
                        .await?;
                    for w in &fresh {
                        queue.extend(self.decide(context.tenant_id, &context.run, w).await?);
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends a claimed run: records its skips and completes it; or, when an affiliate
    /// failed, records the failure (retried later); or, when interrupted, releases the claim.
    pub async fn finish(
        &self,
        prepared: PreparedRun,
        results: Vec<Result<AffiliateResult, EngineError>>,
        interrupted: bool,
    ) -> RunReport {
        let PreparedRun {
            context,
            mut report,
            started,
            ..
        } = prepared;
        let node = self.settings.node_id.as_str();
        let mut error = None;
        let mut skips = Vec::new();
        for result in results {
            match result {
                Ok(r) => {
                    for (label, n) in r.decisions {
                        *report.decisions.entry(label).or_default() += n;
                        telemetry::decisions(label, n);
                    }
                    telemetry::invoices_created(r.invoices.len() as u64);
                    report.invoices.extend(r.invoices);
                    skips.extend(r.skips);
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        let by_key = |a: &String, b: &String| a.cmp(b);
        report.invoices.sort_by(|a, b| {
            a.affiliate_id
                .cmp(&b.affiliate_id)
                .then(by_key(&a.currency, &b.currency))
        });
        skips.sort_by(|a, b| {
            a.affiliate_id
                .cmp(&b.affiliate_id)
                .then(by_key(&a.currency, &b.currency))
        });
        report.skips = skips;
        let outcome = if let Some(e) = error {
            Err(e.to_string())
        } else if interrupted {
            tracing::warn!("run interrupted by shutdown; the next start resumes it");
            if let Err(e) = self.store.release_run(context.run_id, node).await {
                tracing::error!(error = %e, "cannot release the run's claim");
            }
            report.outcome = RunOutcome::Interrupted;
            return report;
        } else {
            let rows: Vec<DecisionRow> = report
                .skips
                .iter()
                .map(|s| DecisionRow {
                    affiliate_id: s.affiliate_id,
                    currency: s.currency.clone(),
                    reason: Some(s.reason),
                    invoice_id: None,
                    amount: s.amount,
                })
                .collect();
            match self
                .store
                .record_skips(context.run_id, context.tenant_id, &rows)
                .await
            {
                Ok(()) => match self.store.complete_run(context.run_id, node).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(EngineError::LostClaim {
                        run_id: context.run_id,
                    }
                    .to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                telemetry::run_finished(true, seconds);
                tracing::info!(
                    invoices = report.invoices.len(),
                    skips = report.skips.len(),
                    seconds,
                    "run completed"
                );
                report
            }
            Err(message) => {
                telemetry::run_finished(false, seconds);
                tracing::error!(error = %message, "run failed");
                if let Err(e) = self.store.fail_run(context.run_id, node, &message).await {
                    tracing::error!(error = %e, "cannot record the failure");
                }
                fail(report, &message)
            }
        }
    }

    /// Loads what §3 reads for every affiliate of the tenant that has payable conversions
    /// in the run's period (or for one affiliate and currency), grouped by affiliate, with
    /// the number of payable conversions left out as bad data.
    async fn load_work(
        &self,
        tenant_id: i64,
        run: &Run,
        scope: Option<(i64, Currency)>,
    ) -> Result<(Vec<AffiliateWork>, u64), StoreError> {
        let affiliate = scope.map(|(id, _)| id);
        let totals = self
            .store
            .payable_totals(tenant_id, run.period, scope)
            .await?;
        let mut bad = if scope.is_none() {
            self.store
                .mismatched_conversions(tenant_id, run.period)
                .await?
        } else {
            0
        };
        if totals.is_empty() {
            return Ok((Vec::new(), bad));
        }
        let statuses: HashMap<i64, AffiliateStatus> = self
            .store
            .affiliates(tenant_id, affiliate)
            .await?
            .into_iter()
            .map(|a| (a.id, a.status.parse().unwrap_or(AffiliateStatus::Unknown)))
            .collect();
        let mut payment_systems = self.store.payment_systems(tenant_id, affiliate).await?;
        let mut invoices = self
            .store
            .existing_invoices(tenant_id, run, affiliate)
            .await?;
        let mut by_affiliate: BTreeMap<i64, AffiliateWork> = BTreeMap::new();
        for total in totals {
            let Ok(currency) = total.currency.parse::<Currency>() else {
                tracing::warn!(affiliate_id = total.affiliate_id, currency = %total.currency, "payable conversions with an invalid currency code left out");
                bad += total.totals.map(|t| t.count).unwrap_or(1);
                continue;
            };
            let in_period = match total.totals {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(affiliate_id = total.affiliate_id, %currency, error = %e, "unreadable payout; affiliate and currency left out of this run");
                    bad += 1;
                    continue;
                }
            };
            let id = total.affiliate_id;
            let work = by_affiliate.entry(id).or_insert_with(|| AffiliateWork {
                affiliate_id: id,
                status: statuses
                    .get(&id)
                    .copied()
                    .unwrap_or(AffiliateStatus::Unknown),
                payment_systems: payment_systems.remove(&id).unwrap_or_default(),
                invoices: invoices.remove(&id).unwrap_or_default(),
                totals: Vec::new(),
            });
            work.totals.push((currency, in_period));
        }
        Ok((by_affiliate.into_values().collect(), bad))
    }

    /// §3 for one affiliate: screen each currency, total from its effective start when an
    /// overlap moved it, settle. Returned in reverse order, to be popped.
    async fn decide(
        &self,
        tenant_id: i64,
        run: &Run,
        work: &AffiliateWork,
    ) -> Result<Vec<Planned>, StoreError> {
        let mut planned = Vec::with_capacity(work.totals.len());
        for &(currency, in_period) in &work.totals {
            let decision = match screen(work.status, currency, &work.invoices, run) {
                Screening::Skip(reason) => Decision::skip(reason),
                Screening::Take { from } => {
                    let payable = if from == run.period.start {
                        in_period
                    } else {
                        self.totals_from(
                            tenant_id,
                            work.affiliate_id,
                            currency,
                            from,
                            run.period.end,
                        )
                        .await?
                    };
                    settle(currency, from, run, payable, &work.payment_systems)
                }
            };
            planned.push(Planned {
                affiliate_id: work.affiliate_id,
                currency,
                decision,
            });
        }
        planned.sort_by_key(|p| std::cmp::Reverse(p.currency));
        Ok(planned)
    }

    async fn totals_from(
        &self,
        tenant_id: i64,
        affiliate_id: i64,
        currency: Currency,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Totals, StoreError> {
        let range = Period {
            start: from,
            end: to,
        };
        let rows = self
            .store
            .payable_totals(tenant_id, range, Some((affiliate_id, currency)))
            .await?;
        match rows.into_iter().next() {
            None => Ok(Totals::default()),
            Some(t) => t.totals.map_err(|detail| StoreError::BadData {
                table: "conversions",
                detail,
            }),
        }
    }

    /// Every decision of a run, in affiliate and currency order, without writing anything.
    async fn dry_run(&self, tenant_id: i64, run: &Run) -> Result<(Vec<Planned>, u64), StoreError> {
        let (work, bad) = self.load_work(tenant_id, run, None).await?;
        let mut decisions = Vec::new();
        for w in &work {
            let mut planned = self.decide(tenant_id, run, w).await?;
            planned.reverse();
            decisions.extend(planned);
        }
        Ok((decisions, bad))
    }

    /// The dry run of the runs due at `at` for one tenant: what would be created and every
    /// skip, writing nothing.
    pub async fn preview(&self, tenant: &TenantRow, at: DateTime<Utc>) -> TenantReport {
        let mut report = TenantReport::new(tenant);
        let schedule = match tenant.schedule() {
            Ok(s) => s,
            Err(e) => {
                report.misconfigured = Some(e.reason);
                return report;
            }
        };
        let due = match self.due(&schedule, tenant.id, at, None).await {
            Ok(d) => d,
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        };
        report.missed = due
            .missed
            .iter()
            .map(|m| MissedRun {
                period_start_date: m.key.start_date,
                period_end_date: m.key.end_date,
                due_at: m.instant,
            })
            .collect();
        for planned in &due.due {
            let mut run_report = empty_report(tenant.id, &schedule, planned, RunOutcome::Previewed);
            let run = Run {
                period: planned.period,
                key: planned.key,
            };
            match self.dry_run(tenant.id, &run).await {
                Ok((decisions, bad)) => {
                    run_report.bad_conversions = bad;
                    for p in &decisions {
                        *run_report.decisions.entry(p.decision.label()).or_default() += 1;
                        match p.decision {
                            Decision::Create(inv) => {
                                run_report.invoices.push(invoice_line(None, p, &inv))
                            }
                            Decision::Skip { reason, amount } if p.decision.is_recorded() => {
                                run_report.skips.push(skip_line(p, reason.as_str(), amount))
                            }
                            Decision::Skip { .. } => {}
                        }
                    }
                }
                Err(e) => run_report = fail(run_report, &e.to_string()),
            }
            report.runs.push(run_report);
        }
        report
    }
}

fn invoice_line(
    invoice_id: Option<i64>,
    p: &Planned,
    inv: &crate::rules::NewInvoice,
) -> InvoiceLine {
    InvoiceLine {
        invoice_id,
        affiliate_id: p.affiliate_id,
        currency: p.currency.to_string(),
        amount: inv.amount,
        conversions_count: inv.conversions_count,
        payment_system_id: inv.payment_system_id,
        period_start: inv.from,
        period_end: inv.to,
    }
}

fn skip_line(p: &Planned, reason: &'static str, amount: Option<Decimal>) -> SkipLine {
    SkipLine {
        affiliate_id: p.affiliate_id,
        currency: p.currency.to_string(),
        reason,
        amount,
    }
}

fn empty_report(
    tenant_id: i64,
    schedule: &TenantSchedule,
    planned: &PlannedRun,
    outcome: RunOutcome,
) -> RunReport {
    RunReport {
        run_id: None,
        tenant_id,
        schedule: schedule.schedule.as_str(),
        period_start_date: planned.key.start_date,
        period_end_date: planned.key.end_date,
        period_start: planned.period.start,
        period_end: planned.period.end,
        due_at: planned.instant,
        outcome,
        error: None,
        invoices: Vec::new(),
        skips: Vec::new(),
        decisions: BTreeMap::new(),
        bad_conversions: 0,
    }
}

fn fail(mut report: RunReport, error: &str) -> RunReport {
    report.outcome = RunOutcome::Failed;
    report.error = Some(error.to_owned());
    report
}
