//! The daemon's actors (SPEC §5), thin shells that move messages and call the engine:
//!
//! - [`supervisor::Supervisor`] owns the configuration and the set of owned tenants, and
//!   starts, re-arms and stops one [`tenant::TenantActor`] per tenant;
//! - each `TenantActor` owns its schedule timer, sleeps until its next run instant, executes
//!   its due runs oldest first and re-arms;
//! - a fixed pool of [`affiliate::AffiliateActor`]s settles the affiliates of every run
//!   (§3 and the invoice transactions), which bounds the writes in flight.
//!
//! See `docs/architecture.md` for the messages between them.

pub mod affiliate;
pub mod supervisor;
pub mod tenant;

use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::engine::Engine;

/// What every actor shares: the current engine (replaced on reload), the clock, the
/// affiliate pool, the bound on runs in flight, and the shutdown signal.
#[derive(Clone, Debug)]
pub struct Shared {
    engine: Arc<RwLock<Engine>>,
    pub clock: SharedClock,
    pool: Arc<RwLock<affiliate::AffiliatePool>>,
    run_slots: Arc<RwLock<Arc<Semaphore>>>,
    /// Runs in flight, drained at shutdown.
    pub tracker: TaskTracker,
    /// Fires at SIGTERM/SIGINT: runs stop between affiliates.
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn new(engine: Engine, clock: SharedClock, concurrency: u32) -> Self {
        Self {
            engine: Arc::new(RwLock::new(engine)),
            clock,
            pool: Arc::new(RwLock::new(affiliate::AffiliatePool::start(concurrency))),
            run_slots: Arc::new(RwLock::new(Arc::new(Semaphore::new(concurrency as usize)))),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// The engine as currently configured.
    pub fn engine(&self) -> Engine {
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_engine(&self, engine: Engine) {
        *self.engine.write().unwrap_or_else(|e| e.into_inner()) = engine;
    }

    pub fn pool(&self) -> affiliate::AffiliatePool {
        self.pool.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn run_slots(&self) -> Arc<Semaphore> {
        self.run_slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies a new concurrency: a new pool and new run slots for runs started from now
    /// on; runs in flight finish on the old ones.
    pub fn set_concurrency(&self, concurrency: u32) {
        if self.pool().len() == concurrency as usize {
            return;
        }
        *self.pool.write().unwrap_or_else(|e| e.into_inner()) =
            affiliate::AffiliatePool::start(concurrency);
        *self.run_slots.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Semaphore::new(concurrency as usize));
    }
}
