//! The Supervisor: owns the configuration and the set of owned tenants; starts, re-arms and
//! stops one TenantActor per tenant as the tenants table and the configuration change.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::oneshot;

use super::Shared;
use super::tenant::{Stop, TenantActor, Update};
use crate::cluster::Membership;
use crate::config::{ClusterMode, Settings};
use crate::engine::{Engine, EngineSettings};
use crate::store::{RunLedger, TenantRow};
use crate::telemetry;

/// Load the tenants, catch up every due run, arm the timers; answers with the number of
/// tenants armed once every catch-up is over.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct Start;

/// Re-read the tenants table and start, re-arm or stop TenantActors accordingly.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Refresh;

/// Apply a new, valid configuration.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload(pub Settings);

/// Stop arming timers and let in-flight work finish within `shutdown_timeout`; answers
/// `false` when it had to give up waiting.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Shutdown;

/// One tenant's row changed through the API: start, re-arm or stop its actor now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Upsert(pub TenantRow);

/// Dynamic mode: heartbeat, learn the live nodes, recompute ownership.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Heartbeat;

/// Liveness probe for the watchdog.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Ping;

/// The Supervisor actor.
pub struct Supervisor {
    settings: Settings,
    shared: Shared,
    tenants: HashMap<i64, (TenantRow, Addr<TenantActor>)>,
    /// Tenants whose stored settings cannot be scheduled, with the row last seen.
    misconfigured: HashMap<i64, TenantRow>,
    refresh_timer: Option<SpawnHandle>,
    refreshing: bool,
    /// Dynamic mode: the live nodes seen at the last successful heartbeat, and when.
    live_nodes: Vec<String>,
    last_heartbeat: Option<std::time::Instant>,
    heartbeat_timer: Option<SpawnHandle>,
    heartbeating: bool,
}

impl Supervisor {
    pub fn new(settings: Settings, shared: Shared) -> Self {
        Self {
            settings,
            shared,
            tenants: HashMap::new(),
            misconfigured: HashMap::new(),
            refresh_timer: None,
            refreshing: false,
            live_nodes: Vec::new(),
            last_heartbeat: None,
            heartbeat_timer: None,
            heartbeating: false,
        }
    }

    fn node_id(&self) -> String {
        self.shared.engine().settings().node_id.clone()
    }

    /// In dynamic mode, heartbeats every `cluster.heartbeat_interval`; otherwise none.
    fn arm_heartbeat(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.heartbeat_timer.take() {
            ctx.cancel_future(handle);
        }
        if self.settings.cluster.mode == ClusterMode::Dynamic {
            self.heartbeat_timer = Some(ctx.run_interval(
                self.settings.cluster.heartbeat_interval,
                |_, ctx| {
                    ctx.notify(Heartbeat);
                },
            ));
        }
    }

    /// Takes in the live nodes of a successful heartbeat.
    fn heard(&mut self, live: Vec<String>) {
        self.last_heartbeat = Some(std::time::Instant::now());
        if live != self.live_nodes {
            tracing::info!(live = ?live, "cluster membership changed");
        }
        telemetry::live_nodes(live.len());
        self.live_nodes = live;
    }

    fn membership(&self) -> Membership {
        match self.settings.cluster.mode {
            ClusterMode::Single => Membership::Single,
            ClusterMode::Dynamic => {
                // Not heard from the database for node_ttl: the others count this node dead
                // and own its tenants, so it owns nothing until it heartbeats again.
                let fresh = self
                    .last_heartbeat
                    .is_some_and(|t| t.elapsed() < self.settings.cluster.node_ttl);
                Membership::Dynamic {
                    node_id: self.node_id(),
                    live_nodes: if fresh {
                        self.live_nodes.clone()
                    } else {
                        Vec::new()
                    },
                }
            }
            ClusterMode::Static {
                shard_index,
                shard_count,
            } => Membership::Static {
                shard_index,
                shard_count,
            },
        }
    }

    fn arm_refresh(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.refresh_timer.take() {
            ctx.cancel_future(handle);
        }
        self.refresh_timer = Some(ctx.run_interval(self.settings.refresh_interval, |_, ctx| {
            ctx.notify(Refresh);
        }));
    }

    /// Brings the actors in line with the tenants table. `ledgers` (at start only) seeds new
    /// actors; `catch_up` collects a receiver per new actor, told when its first tick ends.
    fn apply(
        &mut self,
        rows: Vec<TenantRow>,
        mut ledgers: HashMap<i64, RunLedger>,
        mut catch_up: Option<&mut Vec<oneshot::Receiver<()>>>,
    ) {
        let membership = self.membership();
        let initial = catch_up.is_some();
        let mut changes = 0u64;
        let mut seen = HashSet::with_capacity(rows.len());
        for row in rows {
            if !membership.owns(row.id) {
                continue;
            }
            seen.insert(row.id);
            let ledger = ledgers.remove(&row.id);
            changes += self.apply_row(row, ledger, catch_up.as_deref_mut());
        }
        let gone: Vec<i64> = self
            .tenants
            .keys()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some((_, addr)) = self.tenants.remove(&id) {
                tracing::info!(
                    tenant_id = id,
                    "tenant removed or no longer owned; its actor stops"
                );
                addr.do_send(Stop);
                changes += 1;
            }
        }
        self.misconfigured.retain(|id, _| seen.contains(id));
        if !initial && changes > 0 {
            telemetry::ownership_changes(changes);
        }
        telemetry::tenants(self.tenants.len(), self.misconfigured.len());
    }

    /// Starts, updates or stops the actor of one owned tenant; returns 1 when an actor was
    /// started or stopped.
    fn apply_row(
        &mut self,
        row: TenantRow,
        ledger: Option<RunLedger>,
        catch_up: Option<&mut Vec<oneshot::Receiver<()>>>,
    ) -> u64 {
        let schedule = match row.schedule() {
            Ok(s) => s,
            Err(e) => {
                if self.misconfigured.get(&row.id) != Some(&row) {
                    tracing::error!(tenant_id = row.id, error = %e, "tenant misconfigured; not scheduled until fixed");
                }
                let stopped = self.stop(row.id);
                self.misconfigured.insert(row.id, row);
                return stopped;
            }
        };
        self.misconfigured.remove(&row.id);
        if schedule.schedule == crate::schedule::Schedule::Disabled {
            return self.stop(row.id);
        }
        if let Some((known, addr)) = self.tenants.get_mut(&row.id) {
            if *known != row {
                addr.do_send(Update(row.clone()));
                *known = row;
            }
            return 0;
        }
        let initial = catch_up.is_some();
        let caught_up = catch_up.map(|list| {
            let (tx, rx) = oneshot::channel();
            list.push(rx);
            tx
        });
        // At start every tenant's ledger was loaded in bulk: none means no runs yet.
        let ledger = ledger.or_else(|| initial.then(RunLedger::default));
        let actor = TenantActor::new(
            row.clone(),
            schedule,
            self.shared.clone(),
            ledger,
            caught_up,
        );
        self.tenants.insert(row.id, (row, actor.start()));
        1
    }

    fn stop(&mut self, tenant_id: i64) -> u64 {
        match self.tenants.remove(&tenant_id) {
            Some((_, addr)) => {
                tracing::info!(
                    tenant_id,
                    "tenant disabled or misconfigured; its actor stops"
                );
                addr.do_send(Stop);
                1
            }
            None => 0,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Handler<Start> for Supervisor {
    type Result = ResponseActFuture<Self, Result<usize, String>>;

    fn handle(&mut self, _: Start, _ctx: &mut Context<Self>) -> Self::Result {
        let engine = self.shared.engine();
        let now = self.shared.clock.now();
        let dynamic = self.settings.cluster.mode == ClusterMode::Dynamic;
        let (node_id, ttl) = (self.node_id(), self.settings.cluster.node_ttl);
        Box::pin(
            async move {
                let live = if dynamic {
                    Some(
                        engine
                            .store()
                            .heartbeat(&node_id, ttl)
                            .await
                            .map_err(|e| e.to_string())?,
                    )
                } else {
                    None
                };
                let rows = engine.store().tenants().await.map_err(|e| e.to_string())?;
                let ledgers = engine
                    .store()
                    .ledgers(engine.ledger_since(now))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((live, rows, ledgers))
            }
            .into_actor(self)
            .then(|loaded, act, ctx| {
                let mut receivers = Vec::new();
                let outcome = loaded.map(|(live, rows, ledgers)| {
                    if let Some(live) = live {
                        act.heard(live);
                    }
                    act.apply(rows, ledgers, Some(&mut receivers));
                    act.arm_refresh(ctx);
                    act.arm_heartbeat(ctx);
                    act.tenants.len()
                });
                async move {
                    let armed = outcome?;
                    join_all(receivers).await;
                    Ok(armed)
                }
                .into_actor(act)
            }),
        )
    }
}

impl Handler<Refresh> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Refresh, ctx: &mut Context<Self>) {
        if self.refreshing || self.shared.shutdown.is_cancelled() {
            return;
        }
        self.refreshing = true;
        let store = self.shared.engine().store().clone();
        ctx.spawn(
            async move { store.tenants().await }
                .into_actor(self)
                .map(|rows, act, _| {
                    act.refreshing = false;
                    match rows {
                        Ok(rows) => act.apply(rows, HashMap::new(), None),
                        Err(e) => tracing::error!(error = %e, "cannot refresh tenants; keeping the current ones"),
                    }
                }),
        );
    }
}

impl Handler<Reload> for Supervisor {
    type Result = ();

    fn handle(&mut self, Reload(new): Reload, ctx: &mut Context<Self>) {
        let old = &self.settings;
        if new.database != old.database {
            tracing::warn!("config reload: database settings change only at restart");
        }
        if new.http.listen != old.http.listen {
            tracing::warn!("config reload: http.listen changes only at restart");
        }
        let store = self.shared.engine().store().clone();
        let mut engine_settings = EngineSettings::from_settings(&new);
        // The node id names this process's claims: it stays until restart.
        engine_settings.node_id = self.shared.engine().settings().node_id.clone();
        self.shared.set_engine(Engine::new(store, engine_settings));
        self.shared.set_concurrency(new.concurrency);
        let schedule_changed = new.schedule != old.schedule;
        self.settings = new;
        self.arm_refresh(ctx);
        self.arm_heartbeat(ctx);
        if schedule_changed {
            // Run time, anchor or window changed: every timer is re-armed.
            for (row, addr) in self.tenants.values() {
                addr.do_send(Update(row.clone()));
            }
        }
        // Shard settings may have changed: ownership is recomputed now.
        ctx.notify(Refresh);
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.shared.shutdown.cancel();
        if let Some(handle) = self.refresh_timer.take() {
            ctx.cancel_future(handle);
        }
        for (_, addr) in self.tenants.values() {
            addr.do_send(Stop);
        }
        if let Some(handle) = self.heartbeat_timer.take() {
            ctx.cancel_future(handle);
        }
        let tracker = self.shared.tracker.clone();
        let timeout = self.settings.shutdown_timeout;
        let leave = (self.settings.cluster.mode == ClusterMode::Dynamic)
            .then(|| (self.shared.engine().store().clone(), self.node_id()));
        Box::pin(async move {
            tracker.close();
            let drained =
                tokio::time::timeout(timeout.max(Duration::from_millis(1)), tracker.wait())
                    .await
                    .is_ok();
            if let Some((store, node_id)) = leave
                && let Err(e) = store.leave(&node_id).await
            {
                tracing::warn!(error = %e, "cannot leave the cluster; the others wait for node_ttl");
            }
            drained
        })
    }
}

impl Handler<Upsert> for Supervisor {
    type Result = ();

    fn handle(&mut self, Upsert(row): Upsert, _: &mut Context<Self>) {
        if self.shared.shutdown.is_cancelled() || !self.membership().owns(row.id) {
            return;
        }
        self.apply_row(row, None, None);
        telemetry::tenants(self.tenants.len(), self.misconfigured.len());
    }
}

impl Handler<Heartbeat> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Heartbeat, ctx: &mut Context<Self>) {
        if self.heartbeating || self.shared.shutdown.is_cancelled() {
            return;
        }
        self.heartbeating = true;
        let store = self.shared.engine().store().clone();
        let (node_id, ttl) = (self.node_id(), self.settings.cluster.node_ttl);
        ctx.spawn(
            async move { store.heartbeat(&node_id, ttl).await }
                .into_actor(self)
                .map(|live, act, ctx| {
                    act.heartbeating = false;
                    match live {
                        Ok(live) => act.heard(live),
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                    }
                    // Ownership is recomputed at every heartbeat, failed ones included: a node
                    // silent for node_ttl drops its tenants.
                    ctx.notify(Refresh);
                }),
        );
    }
}

impl Handler<Ping> for Supervisor {
    type Result = bool;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> bool {
        true
    }
}
