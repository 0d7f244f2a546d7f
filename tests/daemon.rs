//! `serve` end to end: the real binary with `--clock-start`, on SQLite and PostgreSQL.
//! Every wait is bounded; none sleeps longer than the condition it waits for.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use common::daemon::{BASE_CONFIG, Daemon, config, eventually};
use common::{TestDb, t};

/// One weekly UTC tenant with one active affiliate and a conversion in the week of
/// 2024-03-04, whose run is Monday 2024-03-11 00:01Z.
async fn seed_weekly(db: &TestDb, schedule: &str) {
    db.tenant(1, "UTC", schedule, "2024-01-01T00:00:00Z").await;
    db.affiliate(11, 1, "active").await;
    db.payment_system(1, 11, "USD", true).await;
    db.conversion(
        100,
        1,
        11,
        "2024-03-06T12:00:00Z",
        "approved",
        "42.5",
        "USD",
    )
    .await;
}

both_backends!(
    invoices_appear_at_the_run_instant,
    a_run_missed_while_stopped_is_caught_up_at_the_next_start,
    a_schedule_change_in_the_database_is_picked_up,
    sighup_applies_a_valid_config_and_rejects_an_invalid_one,
    sigterm_mid_run_leaves_no_half_written_invoice,
    systemd_notifications_reach_the_notify_socket,
);

async fn invoices_appear_at_the_run_instant(db: &TestDb) {
    seed_weekly(db, "weekly").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        db,
        &config(dir.path(), BASE_CONFIG),
        "2024-03-11T00:00:57Z",
        &[],
    );
    daemon.wait_ready();
    // Earlier Mondays were caught up at start, but this week's run is not due yet.
    assert!(db.auto_invoices().await.is_empty());
    eventually(
        Duration::from_secs(15),
        "the invoice of the 00:01 run",
        || async { db.auto_invoices().await.len() == 1 },
    )
    .await;
    let invoice = &db.auto_invoices().await[0];
    assert_eq!(invoice.amount, Decimal::new(4250, 2));
    assert_eq!(invoice.period_start, t("2024-03-04T00:00:00Z"));
    let log = daemon.stop();
    assert!(
        log.contains("run_id="),
        "run lines carry the run id:\n{log}"
    );
}

async fn a_run_missed_while_stopped_is_caught_up_at_the_next_start(db: &TestDb) {
    seed_weekly(db, "weekly").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), BASE_CONFIG);
    // Up on Sunday; nothing due for the week yet.
    let first = Daemon::start(db, &cfg, "2024-03-10T12:00:00Z", &[]);
    first.wait_ready();
    first.stop();
    assert!(db.auto_invoices().await.is_empty());
    // Down through Monday 00:01; back on Tuesday: the run is caught up before READY.
    let second = Daemon::start(db, &cfg, "2024-03-12T09:00:00Z", &[]);
    second.wait_ready();
    assert_eq!(db.auto_invoices().await.len(), 1);
    second.stop();
}

async fn a_schedule_change_in_the_database_is_picked_up(db: &TestDb) {
    seed_weekly(db, "disabled").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        db,
        &config(dir.path(), BASE_CONFIG),
        "2024-03-12T09:00:00Z",
        &[],
    );
    daemon.wait_ready();
    assert!(db.auto_invoices().await.is_empty());
    // Another system switches the tenant to weekly, in force since March 1st: the run of
    // March 11 is due, and the refresh (every second) must find it.
    db.exec(
        "UPDATE tenants SET invoice_schedule = 'weekly', schedule_updated_at = $1 WHERE id = 1",
        vec![db.codec().instant(t("2024-03-01T00:00:00Z"))],
    )
    .await;
    let changed = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the invoice after the schedule change",
        || async { db.auto_invoices().await.len() == 1 },
    )
    .await;
    eprintln!("picked up in {:?}", changed.elapsed());
    daemon.stop();
}

async fn sighup_applies_a_valid_config_and_rejects_an_invalid_one(db: &TestDb) {
    seed_weekly(db, "weekly").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("{BASE_CONFIG}[invoice]\ncomment = \"first\"\n"),
    );
    let daemon = Daemon::start(db, &cfg, "2024-03-11T00:00:50Z", &[]);
    daemon.wait_ready();
    std::fs::write(
        &cfg,
        format!("{BASE_CONFIG}[invoice]\ncomment = \"second\"\n"),
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_log("config reloaded", 1, Duration::from_secs(10));
    std::fs::write(&cfg, "[schedule]\nrun_time = \"25:00\"\n").unwrap();
    daemon.signal("HUP");
    daemon.wait_log("config reload rejected", 1, Duration::from_secs(10));
    assert!(
        daemon.log().contains("schedule.run_time"),
        "{}",
        daemon.log()
    );
    eventually(
        Duration::from_secs(20),
        "the invoice of the 00:01 run",
        || async { db.auto_invoices().await.len() == 1 },
    )
    .await;
    // The valid reload is in force, the invalid one was not applied.
    assert_eq!(db.auto_invoices().await[0].comment, "second");
    daemon.stop();
}

async fn sigterm_mid_run_leaves_no_half_written_invoice(db: &TestDb) {
    // Enough affiliates (20 batches of 250, one batch at a time) that the run is still going
    // when SIGTERM lands.
    let affiliates = 5000i64;
    db.tenant(1, "UTC", "weekly", "2024-01-01T00:00:00Z").await;
    let ids: Vec<i64> = (1000..1000 + affiliates).collect();
    db.bulk_affiliates(1, &ids, "2024-03-06T12:00:00Z").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("{BASE_CONFIG}[engine]\nconcurrency = 1\n"),
    );
    let daemon = Daemon::start(db, &cfg, "2024-03-11T00:00:58Z", &[]);
    daemon.wait_ready();
    eventually(
        Duration::from_secs(20),
        "the run to be under way",
        || async { !db.auto_invoices().await.is_empty() },
    )
    .await;
    let log = daemon.stop();
    assert!(log.contains("run interrupted by shutdown"), "{log}");
    let partial = db.auto_invoices().await;
    assert!(
        partial.len() < affiliates as usize,
        "the run finished before SIGTERM"
    );
    for inv in &partial {
        assert_eq!(db.linked(inv.id).await.len() as i32, inv.conversions_count);
    }
    let status = db
        .runs()
        .await
        .into_iter()
        .find(|r| r.1 == "2024-03-11")
        .unwrap()
        .2;
    assert_eq!(status, "pending", "released for the next start");
    // The next start completes the run: every affiliate invoiced exactly once.
    let again = Daemon::start(db, &cfg, "2024-03-11T00:05:00Z", &[]);
    again.wait_ready();
    again.stop();
    let all = db.auto_invoices().await;
    assert_eq!(all.len(), affiliates as usize);
    let mut ids: Vec<i64> = all.iter().map(|i| i.affiliate_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), affiliates as usize);
    assert_eq!(
        db.count("SELECT count(*) FROM conversions WHERE invoice_id IS NOT NULL")
            .await,
        affiliates
    );
    let status = db
        .runs()
        .await
        .into_iter()
        .find(|r| r.1 == "2024-03-11")
        .unwrap()
        .2;
    assert_eq!(status, "completed");
}

async fn systemd_notifications_reach_the_notify_socket(db: &TestDb) {
    seed_weekly(db, "weekly").await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket_env = socket_path.to_str().unwrap().to_owned();
    let daemon = Daemon::start(
        db,
        &config(dir.path(), BASE_CONFIG),
        "2024-03-12T09:00:00Z",
        &[("NOTIFY_SOCKET", &socket_env), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen: Vec<String> = Vec::new();
    let receive_until = |needle: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no {needle} among {seen:?}");
            let mut buf = [0u8; 4096];
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {needle} ({e}); received {seen:?}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message.lines().any(|l| l == needle);
            seen.push(message);
            if found {
                return;
            }
        }
    };
    receive_until("READY=1", &mut seen);
    receive_until("WATCHDOG=1", &mut seen);
    daemon.signal("HUP");
    receive_until("RELOADING=1", &mut seen);
    receive_until("READY=1", &mut seen);
    daemon.signal("TERM");
    receive_until("STOPPING=1", &mut seen);
    let mut daemon = daemon;
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
}
