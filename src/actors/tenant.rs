//! TenantActor: one per owned tenant. Owns its schedule timer: sleeps until the next run
//! instant (no loop polls every tenant), executes the due runs oldest first through the
//! engine and the affiliate pool, and re-arms.

use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::Shared;
use crate::engine::{RunOutcome, TenantReport};
use crate::schedule::TenantSchedule;
use crate::store::{RunLedger, TenantRow};
use crate::telemetry;

/// The longest a timer sleeps before looking at the clock again: guards against wall-clock
/// steps (NTP, suspend) that a monotonic timer does not see.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// First retry delay after a failed run; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Executes what is due now, then re-arms.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick;

/// The tenant's row changed (schedule, time zone, anchor or `schedule_updated_at`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Update(pub TenantRow);

/// Stop when idle (the tenant was removed, disabled, or is no longer owned).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Internal: the runs started by a tick are over.
#[derive(Message)]
#[rtype(result = "()")]
struct RunsFinished(TenantReport);

/// The actor of one tenant.
pub struct TenantActor {
    row: TenantRow,
    schedule: TenantSchedule,
    shared: Shared,
    timer: Option<SpawnHandle>,
    running: bool,
    /// A tick or an update arrived while running: tick again when done.
    again: bool,
    stopping: bool,
    failures: u32,
    retry_at: Option<DateTime<Utc>>,
    /// The ledger loaded in bulk at start, used by the first tick only.
    ledger: Option<RunLedger>,
    /// Told when the first tick (the catch-up) is over.
    caught_up: Option<oneshot::Sender<()>>,
    /// This tenant's share of `autoinvoice_runs_overdue`.
    overdue: usize,
    /// Clock reading at the start of the last tick: run instants after it are new.
    last_tick: Option<DateTime<Utc>>,
    /// Run instants crossed by the last tick.
    crossed: usize,
}

impl TenantActor {
    pub fn new(
        row: TenantRow,
        schedule: TenantSchedule,
        shared: Shared,
        ledger: Option<RunLedger>,
        caught_up: Option<oneshot::Sender<()>>,
    ) -> Self {
        Self {
            row,
            schedule,
            shared,
            timer: None,
            running: false,
            again: false,
            stopping: false,
            failures: 0,
            retry_at: None,
            ledger,
            caught_up,
            overdue: 0,
            last_tick: None,
            crossed: 0,
        }
    }

    /// Sets this tenant's share of the overdue gauge.
    fn set_overdue(&mut self, overdue: usize) {
        telemetry::overdue(overdue as i64 - self.overdue as i64);
        self.overdue = overdue;
    }

    /// Cancels the armed timer, if any.
    fn disarm(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
            telemetry::timers_armed(-1);
        }
    }

    fn arm(&mut self, ctx: &mut Context<Self>) {
        self.disarm(ctx);
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        let now = self.shared.clock.now();
        let settings = self.shared.engine().settings().schedule;
        let next = self.schedule.next_run(&settings, now).map(|r| r.instant);
        let wake = [next, self.retry_at].into_iter().flatten().min();
        let Some(wake) = wake else {
            return;
        };
        let sleep = (wake - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_SLEEP);
        tracing::debug!(tenant_id = self.row.id, %wake, ?sleep, "armed");
        telemetry::timers_armed(1);
        self.timer = Some(ctx.run_later(sleep, |act, ctx| {
            // Fired: no longer armed.
            if act.timer.take().is_some() {
                telemetry::timers_armed(-1);
            }
            ctx.notify(Tick);
        }));
    }

    fn backoff(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.saturating_sub(1).min(16));
        FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.notify(Tick);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.set_overdue(0);
        if self.timer.take().is_some() {
            telemetry::timers_armed(-1);
        }
    }
}

impl Handler<Tick> for TenantActor {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        if self.running {
            self.again = true;
            return;
        }
        if self.shared.shutdown.is_cancelled() || self.stopping {
            return;
        }
        self.running = true;
        self.disarm(ctx);
        // Run instants passed since the last tick: due now, overdue until they complete, even
        // if the database cannot be read to know more.
        let now = self.shared.clock.now();
        let settings = self.shared.engine().settings().schedule;
        self.crossed = match self.last_tick {
            Some(last) => self
                .schedule
                .runs_between(&settings, last.max(self.schedule.updated_at), now)
                .count(),
            None => 0,
        };
        self.last_tick = Some(now);
        // Due now and not completed: overdue from this moment, however long the run takes.
        self.set_overdue(self.overdue + self.crossed);
        let shared = self.shared.clone();
        let row = self.row.clone();
        let ledger = self.ledger.take();
        let me = ctx.address();
        // The run goes on the tokio pool, tracked so shutdown can wait for it; its end
        // comes back to this actor as a message.
        self.shared.tracker.spawn(async move {
            let slots = shared.run_slots();
            let _permit = slots.acquire().await;
            let engine = shared.engine();
            let pool = shared.pool();
            let now = shared.clock.now();
            let report = engine
                .run_due_with(&row, now, ledger, &pool, &shared.shutdown)
                .await;
            me.do_send(RunsFinished(report));
        });
    }
}

impl Handler<RunsFinished> for TenantActor {
    type Result = ();

    fn handle(&mut self, RunsFinished(report): RunsFinished, ctx: &mut Context<Self>) {
        self.running = false;
        if let Some(done) = self.caught_up.take() {
            let _ = done.send(());
        }
        let now = self.shared.clock.now();
        // Overdue: the runs of this pass that did not complete. When the ledger could not be
        // read, what is known is what the tick added.
        if report.error.is_none() {
            let overdue = report
                .runs
                .iter()
                .filter(|r| {
                    !matches!(
                        r.outcome,
                        RunOutcome::Completed | RunOutcome::AlreadyCompleted
                    )
                })
                .count();
            self.set_overdue(overdue);
        }
        let failed =
            report.error.is_some() || report.runs.iter().any(|r| r.outcome == RunOutcome::Failed);
        let elsewhere = report
            .runs
            .iter()
            .any(|r| r.outcome == RunOutcome::ClaimedElsewhere);
        self.retry_at = None;
        if failed && !self.shared.shutdown.is_cancelled() {
            self.failures += 1;
            let delay = self.backoff();
            tracing::warn!(
                tenant_id = self.row.id,
                failures = self.failures,
                ?delay,
                "run failed; retrying after a delay"
            );
            self.retry_at = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
        } else {
            self.failures = 0;
        }
        if elsewhere {
            // Look again once the other holder's lease may have expired (a takeover).
            let lease = self.shared.engine().settings().lease + Duration::from_secs(1);
            let at = now + chrono::Duration::from_std(lease).unwrap_or_default();
            self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
        }
        if self.stopping {
            ctx.stop();
            return;
        }
        if std::mem::take(&mut self.again) {
            ctx.notify(Tick);
        } else {
            self.arm(ctx);
        }
    }
}

impl Handler<Update> for TenantActor {
    type Result = ();

    fn handle(&mut self, Update(row): Update, ctx: &mut Context<Self>) {
        match row.schedule() {
            Ok(schedule) => {
                tracing::info!(tenant_id = row.id, schedule = %schedule.schedule, zone = %schedule.zone, "tenant settings changed; re-armed");
                self.row = row;
                self.schedule = schedule;
                // A change written with an older schedule_updated_at can make runs due now.
                ctx.notify(Tick);
            }
            Err(e) => {
                tracing::error!(tenant_id = row.id, error = %e, "tenant misconfigured; its timer is stopped");
                ctx.notify(Stop);
            }
        }
    }
}

impl Handler<Stop> for TenantActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.stopping = true;
        self.disarm(ctx);
        if let Some(done) = self.caught_up.take() {
            let _ = done.send(());
        }
        if !self.running {
            ctx.stop();
        }
    }
}
