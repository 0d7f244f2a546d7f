//! A database outage around a run instant, on a private PostgreSQL server the test stops
//! and starts: readiness drops to 503, the run fails and stays overdue while the database is
//! down, and completes — exactly once — when it is back.

mod common;

use std::time::Duration;

use common::TestDb;
use common::daemon::{Api, Daemon, config, eventually, metric};
use common::pgcluster::PgCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_due_during_an_outage_stay_overdue_until_they_complete() {
    let cluster = PgCluster::start();
    let db = TestDb::postgres_at(&cluster.url("postgres")).await.unwrap();
    db.tenant(1, "UTC", "weekly", "2024-01-01T00:00:00Z").await;
    db.affiliate(11, 1, "active").await;
    db.payment_system(1, 11, "USD", true).await;
    db.conversion(100, 1, 11, "2024-03-06T12:00:00Z", "approved", "42", "USD")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[tenants]\nrefresh_interval = \"1s\"\n[http]\nlisten = \"127.0.0.1:0\"\n[database]\nmax_connections = 4\n",
    );
    // The run is due at 00:01:00; the daemon starts 4 s before.
    let daemon = Daemon::start(&db, &cfg, "2024-03-11T00:00:56Z", &[]);
    daemon.wait_ready();
    let api = Api::new(daemon.http_base(), None);
    assert_eq!(api.get("/readyz").status, 200);

    cluster.down();
    eventually(
        Duration::from_secs(10),
        "readyz 503 while the database is down",
        || async { api.get("/readyz").status == 503 },
    )
    .await;
    // The instant passes with the database down: the run is overdue at once, and fails once
    // the pool gives up waiting for a connection (10 s).
    eventually(
        Duration::from_secs(15),
        "the run overdue during the outage",
        || async { metric(&api.get("/metrics").body, "autoinvoice_runs_overdue") == 1.0 },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the run failed during the outage",
        || async {
            let page = api.get("/metrics").body;
            metric(&page, "autoinvoice_runs_total{outcome=\"failed\"}") >= 1.0
                && metric(&page, "autoinvoice_runs_overdue") == 1.0
        },
    )
    .await;
    assert_eq!(api.get("/healthz").status, 200, "alive through the outage");

    cluster.up();
    let log_on_failure = LogOnPanic(&daemon);
    eventually(
        Duration::from_secs(60),
        "the retried run to complete",
        || async {
            let page = api.get("/metrics").body;
            metric(&page, "autoinvoice_runs_overdue") == 0.0
                && metric(&page, "autoinvoice_runs_total{outcome=\"completed\"}") >= 1.0
        },
    )
    .await;
    std::mem::forget(log_on_failure);
    assert_eq!(api.get("/readyz").status, 200);
    let invoices = db.auto_invoices().await;
    assert_eq!(invoices.len(), 1);
    assert_eq!(db.linked(invoices[0].id).await, [100]);
    daemon.stop();
}

/// Prints the daemon's metrics and log if the test fails while it is alive.
struct LogOnPanic<'a>(&'a Daemon);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let page = Api::new(self.0.http_base(), None).get("/metrics").body;
            eprintln!("metrics:\n{page}");
            eprintln!("daemon log:\n{}", self.0.log());
        }
    }
}
