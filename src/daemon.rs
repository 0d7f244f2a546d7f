//! `autoinvoice serve` (SPEC §5): start-up order, signals, systemd notifications and the
//! watchdog around the actor system.
//!
//! Start: config → database (+ migrations) → tenants → catch-up of every due run → timers
//! armed → READY=1. SIGHUP re-reads the config (RELOADING=1 … READY=1); SIGTERM/SIGINT stop
//! arming timers, let in-flight work finish within `shutdown_timeout` and exit 0.

use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};

use crate::actors::Shared;
use crate::actors::supervisor::{Ping, Refresh, Reload, Shutdown, Start, Supervisor};
use crate::clock::{SharedClock, ShiftedClock, SystemClock};
use crate::commands::{CliError, LogLevelHandle, open_store};
use crate::config::{ClusterMode, Settings, Source};
use crate::engine::{Engine, EngineSettings};
use crate::http::{self, ApiState};
use crate::notify;
use crate::telemetry;

/// Runs the daemon until SIGTERM/SIGINT.
pub fn serve(
    source: Source,
    settings: Settings,
    clock_start: Option<DateTime<Utc>>,
    set_log_level: LogLevelHandle,
) -> Result<ExitCode, CliError> {
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime can be built")
    });
    system.block_on(run(source, settings, clock_start, set_log_level))
}

async fn run(
    source: Source,
    settings: Settings,
    clock_start: Option<DateTime<Utc>>,
    set_log_level: LogLevelHandle,
) -> Result<ExitCode, CliError> {
    let started = Instant::now();
    let clock: SharedClock = match clock_start {
        Some(at) => Arc::new(ShiftedClock::starting_at(at)),
        None => Arc::new(SystemClock),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node_id = %settings.cluster.node_id,
        clock = %clock.now(),
        "starting"
    );
    // Signals are taken over first, so SIGTERM during a long catch-up is graceful too.
    let signal_error =
        |e: std::io::Error| CliError::Runtime(format!("cannot listen for signals: {e}"));
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let metrics = telemetry::install()
        .map_err(|e| CliError::Runtime(format!("cannot install metrics: {e}")))?;
    let store = open_store(&settings).await?;
    let engine = Engine::new(store, EngineSettings::from_settings(&settings));
    let shared = Shared::new(engine, clock, settings.concurrency);
    let supervisor = Supervisor::new(settings.clone(), shared.clone()).start();

    // Catch-up can take long on a large backlog: keep asking systemd for more time.
    let extender = tokio::spawn(async {
        loop {
            notify::extend_start(Duration::from_secs(30), "catching up due runs");
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
    let start = supervisor.send(Start);
    let armed = tokio::select! {
        armed = start => armed
            .map_err(|e| CliError::Runtime(format!("supervisor stopped: {e}")))?
            .map_err(|e| CliError::Runtime(format!("cannot start: {e}")))?,
        _ = terminate.recv() => return Ok(stop(&supervisor).await),
        _ = interrupt.recv() => return Ok(stop(&supervisor).await),
    };
    extender.abort();
    let admin_token = Arc::new(RwLock::new(settings.http.admin_token.clone()));
    let api = ApiState {
        shared: shared.clone(),
        supervisor: supervisor.clone(),
        admin_token: admin_token.clone(),
        metrics: metrics.clone(),
    };
    let (bound, http) = http::start(settings.http.listen, api).map_err(|e| {
        CliError::Runtime(format!(
            "cannot listen on {} (http.listen): {e}",
            settings.http.listen
        ))
    })?;
    tracing::info!(addr = %bound, "HTTP listening");
    tokio::spawn(async move {
        // The exporter's histograms need their upkeep run by whoever owns the handle.
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            metrics.run_upkeep();
        }
    });
    if settings.cluster.mode != ClusterMode::Dynamic {
        // Single and static nodes do not heartbeat: they count themselves.
        telemetry::live_nodes(1);
    }
    notify::ready();
    tracing::info!(
        tenants = armed,
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );

    if let Some(interval) = notify::watchdog_interval() {
        let supervisor = supervisor.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                // Ping only while the actor system answers.
                if let Ok(Ok(true)) = tokio::time::timeout(interval, supervisor.send(Ping)).await {
                    notify::watchdog();
                } else {
                    tracing::error!("actor system unresponsive; withholding the watchdog ping");
                }
            }
        });
    }

    loop {
        tokio::select! {
            _ = hangup.recv() => {
                notify::reloading();
                match Settings::load(&source) {
                    Ok(mut new) => {
                        // The node id is the process's identity in run claims: it stays.
                        new.cluster.node_id.clone_from(&settings.cluster.node_id);
                        set_log_level(&new.log.level);
                        if let Ok(mut token) = admin_token.write() {
                            token.clone_from(&new.http.admin_token);
                        }
                        supervisor.do_send(Reload(new));
                        telemetry::config_reload(true);
                        tracing::info!("config reloaded");
                    }
                    Err(e) => {
                        telemetry::config_reload(false);
                        tracing::error!(error = %e, "config reload rejected; the previous config stays in force");
                        supervisor.do_send(Refresh);
                    }
                }
                notify::ready();
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    let code = stop(&supervisor).await;
    http.stop(true).await;
    Ok(code)
}

/// Graceful stop: no new runs, in-flight work drained within `shutdown_timeout`, exit 0.
async fn stop(supervisor: &Addr<Supervisor>) -> ExitCode {
    notify::stopping();
    tracing::info!("stopping: no new runs; waiting for runs in flight");
    let drained = supervisor.send(Shutdown).await.unwrap_or(false);
    if drained {
        tracing::info!("stopped");
    } else {
        tracing::warn!(
            "shutdown_timeout reached with work in flight; its runs resume at the next start"
        );
    }
    ExitCode::SUCCESS
}
