//! SPEC §9 and §10 against the running binary, on SQLite and PostgreSQL: health, metrics,
//! auth, the settings API, runs, decisions, invoices, preview, hostile input. Every JSON
//! answer is checked against docs/openapi.json.

mod common;

use std::time::Duration;

use common::daemon::{Api, BASE_CONFIG, Daemon, Reply, config, eventually, metric};
use common::openapi::assert_conforms;
use common::{TestDb, t};

const TOKEN: &str = "correct-horse-battery-staple";

fn http_config(token: Option<&str>, refresh: &str) -> String {
    let mut text =
        format!("[tenants]\nrefresh_interval = \"{refresh}\"\n[http]\nlisten = \"127.0.0.1:0\"\n");
    if let Some(t) = token {
        text.push_str(&format!("admin_token = \"{t}\"\n"));
    }
    text.push_str("[log]\nlevel = \"info\"\n");
    text
}

/// Seeds tenant 1 (weekly, UTC) with two affiliates and conversions in the week of
/// 2024-03-04, and tenant 2 (disabled).
async fn seed(db: &TestDb) {
    db.tenant(1, "UTC", "weekly", "2024-01-01T00:00:00Z").await;
    db.tenant(2, "Europe/Paris", "disabled", "2024-01-01T00:00:00Z")
        .await;
    db.affiliate(11, 1, "active").await;
    db.payment_system(1, 11, "USD", true).await;
    db.affiliate(12, 1, "banned").await;
    db.conversion(
        100,
        1,
        11,
        "2024-03-06T12:00:00Z",
        "approved",
        "10.005",
        "USD",
    )
    .await;
    db.conversion(101, 1, 12, "2024-03-06T12:00:00Z", "approved", "3", "USD")
        .await;
    db.affiliate(21, 2, "active").await;
    db.payment_system(2, 21, "USD", true).await;
    db.conversion(200, 2, 21, "2024-03-06T12:00:00Z", "approved", "3", "USD")
        .await;
}

fn started(
    db: &TestDb,
    token: Option<&str>,
    refresh: &str,
    clock: &str,
) -> (tempfile::TempDir, Daemon, Api) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        db,
        &config(dir.path(), &http_config(token, refresh)),
        clock,
        &[],
    );
    daemon.wait_ready();
    let api = Api::new(daemon.http_base(), token);
    (dir, daemon, api)
}

fn checked(method: &str, template: &str, reply: &Reply) -> serde_json::Value {
    assert!(
        reply.content_type.starts_with("application/json"),
        "{reply:?}"
    );
    let body = reply.json();
    assert_conforms(method, template, reply.status, &body);
    body
}

both_backends!(
    health_readiness_and_metrics_move_with_a_run,
    auth_without_and_with_a_token,
    settings_are_validated_saved_and_rearm_the_timer,
    runs_decisions_invoices_and_preview,
    hostile_input_gets_clean_4xx_and_changes_nothing,
    concurrent_puts_last_write_wins_and_one_timer,
);

async fn health_readiness_and_metrics_move_with_a_run(db: &TestDb) {
    seed(db).await;
    let (_dir, daemon, api) = started(db, None, "1h", "2024-03-11T00:00:57Z");
    assert_eq!(api.get("/healthz").status, 200);
    assert_eq!(api.get("/readyz").status, 200);
    let before = api.get("/metrics");
    assert!(before.content_type.starts_with("text/plain"), "{before:?}");
    for name in [
        "autoinvoice_runs_total{outcome=\"completed\"}",
        "autoinvoice_runs_total{outcome=\"failed\"}",
        "autoinvoice_invoices_created_total",
        "autoinvoice_decisions_total{reason=\"created\"}",
        "autoinvoice_decisions_total{reason=\"not_active\"}",
        "autoinvoice_decisions_total{reason=\"no_payable_conversions\"}",
        "autoinvoice_tenants_owned",
        "autoinvoice_runs_overdue",
        "autoinvoice_runs_missed_total",
        "autoinvoice_config_reloads_total{result=\"ok\"}",
        "autoinvoice_config_reloads_total{result=\"error\"}",
        "autoinvoice_cluster_live_nodes",
        "autoinvoice_build_info{version=\"0.1.0\"}",
    ] {
        metric(&before.body, name);
    }
    assert_eq!(metric(&before.body, "autoinvoice_tenants_owned"), 1.0);
    let completed_before = metric(
        &before.body,
        "autoinvoice_runs_total{outcome=\"completed\"}",
    );
    let created_before = metric(&before.body, "autoinvoice_invoices_created_total");
    // The run of 00:01 creates one invoice (11) and skips 12 (banned).
    eventually(Duration::from_secs(15), "the 00:01 run", || async {
        db.auto_invoices().await.len() == 1
    })
    .await;
    eventually(Duration::from_secs(5), "the run's metrics", || async {
        let page = api.get("/metrics").body;
        metric(&page, "autoinvoice_runs_total{outcome=\"completed\"}") == completed_before + 1.0
    })
    .await;
    let after = api.get("/metrics").body;
    assert_eq!(
        metric(&after, "autoinvoice_invoices_created_total"),
        created_before + 1.0
    );
    assert!(metric(&after, "autoinvoice_decisions_total{reason=\"not_active\"}") >= 1.0);
    assert!(
        after.contains("autoinvoice_run_duration_seconds_count"),
        "{after}"
    );
    assert_eq!(metric(&after, "autoinvoice_runs_overdue"), 0.0);
    // A reload counts.
    daemon.signal("HUP");
    daemon.wait_log("config reloaded", 1, Duration::from_secs(10));
    assert_eq!(
        metric(
            &api.get("/metrics").body,
            "autoinvoice_config_reloads_total{result=\"ok\"}"
        ),
        1.0
    );
    daemon.stop();
}

async fn auth_without_and_with_a_token(db: &TestDb) {
    seed(db).await;
    let body = r#"{"schedule":"monthly","timezone":"UTC"}"#;
    let preview = r#"{"at":"2024-03-11T00:05:00Z"}"#;
    {
        let (_dir, daemon, api) = started(db, None, "1h", "2024-03-10T00:00:00Z");
        // No token configured: reads are open, writes refused.
        checked(
            "GET",
            "/api/v1/tenants/{id}/settings",
            &api.get("/api/v1/tenants/1/settings"),
        );
        let put = api.send("PUT", "/api/v1/tenants/1/settings", body);
        assert_eq!(put.status, 403);
        checked("PUT", "/api/v1/tenants/{id}/settings", &put);
        assert_eq!(
            api.send("POST", "/api/v1/tenants/1/preview", preview)
                .status,
            403
        );
        daemon.stop();
    }
    let (_dir, daemon, api) = started(db, Some(TOKEN), "1h", "2024-03-10T00:00:00Z");
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer correct-horse-battery-stapl3"),
        Some(TOKEN),
        Some("Basic Zm9vOmJhcg=="),
    ] {
        let reply = api.get_with("/api/v1/tenants", auth);
        assert_eq!(reply.status, 401, "{auth:?}");
        checked("GET", "/api/v1/tenants", &reply);
    }
    let ok = api.get_with("/api/v1/tenants", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(ok.status, 200);
    checked("GET", "/api/v1/tenants", &ok);
    let put = api.send("PUT", "/api/v1/tenants/1/settings", body);
    assert_eq!(put.status, 200, "{put:?}");
    // Health and metrics need no token.
    assert_eq!(api.get_with("/metrics", None).status, 200);
    assert_eq!(api.get_with("/healthz", None).status, 200);
    daemon.stop();
}

async fn settings_are_validated_saved_and_rearm_the_timer(db: &TestDb) {
    seed(db).await;
    // Refresh only hourly: only the API can re-arm tenant 2 before its run.
    let (_dir, daemon, api) = started(db, Some(TOKEN), "1h", "2024-03-10T23:00:50Z");
    let path = "/api/v1/tenants/{id}/settings";
    let get = api.get("/api/v1/tenants/2/settings");
    let body = checked("GET", path, &get);
    assert_eq!(body["schedule"], "disabled");
    assert!(body["next_run"].is_null());
    for (bad, needle) in [
        (
            r#"{"schedule":"fortnightly","timezone":"UTC"}"#,
            "unknown schedule",
        ),
        (
            r#"{"schedule":"weekly","timezone":"Mars/Olympus"}"#,
            "unknown time zone",
        ),
        (
            r#"{"schedule":"biweekly","timezone":"UTC","biweekly_anchor":"2024-01-02"}"#,
            "not a Monday",
        ),
        (
            r#"{"schedule":"biweekly","timezone":"UTC","biweekly_anchor":"soon"}"#,
            "not a date",
        ),
        (r#"{"schedule":"weekly""#, "malformed JSON"),
        (
            r#"{"schedule":"weekly","timezone":"UTC","colour":"red"}"#,
            "malformed JSON",
        ),
        (r#"{"schedule":7,"timezone":"UTC"}"#, "malformed JSON"),
        ("", "malformed JSON"),
    ] {
        let reply = api.send("PUT", "/api/v1/tenants/2/settings", bad);
        assert_eq!(reply.status, 422, "{bad}: {reply:?}");
        let body = checked("PUT", path, &reply);
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{bad}: {body}"
        );
    }
    let huge = format!(
        r#"{{"schedule":"weekly","timezone":"UTC","x":"{}"}}"#,
        "a".repeat(200_000)
    );
    let reply = api.send("PUT", "/api/v1/tenants/2/settings", &huge);
    assert_eq!(reply.status, 413, "{reply:?}");
    checked("PUT", path, &reply);
    for unknown in [
        "/api/v1/tenants/999/settings",
        "/api/v1/tenants/abc/settings",
        "/api/v1/tenants/99999999999999999999/settings",
    ] {
        let reply = api.get(unknown);
        assert_eq!(reply.status, 404, "{unknown}");
        checked("GET", path, &reply);
        let reply = api.send("PUT", unknown, r#"{"schedule":"weekly","timezone":"UTC"}"#);
        assert_eq!(reply.status, 404, "{unknown}");
    }
    // Save weekly in Paris: the next run is Monday 2024-03-11 00:01 CET = 03-10T23:01Z.
    let reply = api.send(
        "PUT",
        "/api/v1/tenants/2/settings",
        r#"{"schedule":"weekly","timezone":"Europe/Paris","biweekly_anchor":null}"#,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let saved = checked("PUT", path, &reply);
    assert_eq!(saved["schedule"], "weekly");
    assert_eq!(saved["next_run"]["at"], "2024-03-10T23:01:00Z");
    assert_eq!(saved["next_run"]["period_start"], "2024-03-03T23:00:00Z");
    assert_eq!(saved["next_run"]["period_end"], "2024-03-10T23:00:00Z");
    assert_eq!(saved["next_run"]["period_start_date"], "2024-03-04");
    assert_eq!(saved["next_run"]["period_end_date"], "2024-03-11");
    let stamped = common::json_instant(&saved["schedule_updated_at"]);
    assert!(
        stamped >= t("2024-03-10T23:00:50Z") && stamped < t("2024-03-10T23:01:00Z"),
        "{stamped}"
    );
    assert_eq!(
        checked("GET", path, &api.get("/api/v1/tenants/2/settings")),
        saved
    );
    // Re-armed at once: the 23:01Z run invoices tenant 2's conversion without any refresh.
    eventually(
        Duration::from_secs(15),
        "tenant 2's run after the PUT",
        || async { db.auto_invoices().await.iter().any(|i| i.tenant_id == 2) },
    )
    .await;
    // Back to disabled: next_run is null.
    let reply = api.send(
        "PUT",
        "/api/v1/tenants/2/settings",
        r#"{"schedule":"disabled","timezone":"Europe/Paris"}"#,
    );
    assert!(checked("PUT", path, &reply)["next_run"].is_null());
    daemon.stop();
}

async fn runs_decisions_invoices_and_preview(db: &TestDb) {
    seed(db).await;
    let (_dir, daemon, api) = started(db, Some(TOKEN), "1h", "2024-03-12T09:00:00Z");
    // Catch-up at start executed the runs of Feb 12 … Mar 11 for tenant 1.
    let runs = checked(
        "GET",
        "/api/v1/tenants/{id}/runs",
        &api.get("/api/v1/tenants/1/runs?limit=2"),
    );
    assert_eq!(runs["items"].as_array().unwrap().len(), 2);
    assert_eq!(runs["total"], 5);
    assert_eq!(
        runs["items"][0]["period_end_date"], "2024-03-11",
        "newest first"
    );
    let page2 = checked(
        "GET",
        "/api/v1/tenants/{id}/runs",
        &api.get("/api/v1/tenants/1/runs?limit=2&offset=4"),
    );
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    let run_id = runs["items"][0]["id"].as_i64().unwrap();
    let run = checked(
        "GET",
        "/api/v1/runs/{id}",
        &api.get(&format!("/api/v1/runs/{run_id}")),
    );
    let decisions = run["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0]["outcome"], "created");
    assert_eq!(decisions[0]["amount"], "10.01");
    assert_eq!(decisions[1]["reason"], "not_active");
    let missing = api.get("/api/v1/runs/987654");
    assert_eq!(missing.status, 404);
    checked("GET", "/api/v1/runs/{id}", &missing);

    let path = "/api/v1/tenants/{id}/invoices";
    let all = checked("GET", path, &api.get("/api/v1/tenants/1/invoices"));
    assert_eq!(all["total"], 1);
    assert_eq!(all["items"][0]["amount"], "10.01");
    assert_eq!(all["items"][0]["status"], "waiting");
    let none = checked(
        "GET",
        path,
        &api.get("/api/v1/tenants/1/invoices?status=completed"),
    );
    assert_eq!(none["total"], 0);
    let in_range = checked(
        "GET",
        path,
        &api.get("/api/v1/tenants/1/invoices?status=waiting&from=2024-03-05T00:00:00Z&to=2024-03-06T00:00:00Z"),
    );
    assert_eq!(in_range["total"], 1);
    let before = checked(
        "GET",
        path,
        &api.get("/api/v1/tenants/1/invoices?to=2024-03-04T00:00:00Z"),
    );
    assert_eq!(
        before["total"], 0,
        "half-open: a period starting at `to` is outside"
    );
    let bad = api.get("/api/v1/tenants/1/invoices?from=yesterday");
    assert_eq!(bad.status, 400);
    checked("GET", path, &bad);
    for bad_limit in ["limit=0", "limit=501", "limit=-1", "offset=-5", "limit=ten"] {
        let reply = api.get(&format!("/api/v1/tenants/1/invoices?{bad_limit}"));
        assert_eq!(reply.status, 400, "{bad_limit}");
        checked("GET", path, &reply);
    }

    // Preview: the next week's run with a new conversion, and nothing written.
    db.conversion(102, 1, 11, "2024-03-12T12:00:00Z", "approved", "7", "USD")
        .await;
    let counts = (
        db.invoices().await.len(),
        db.runs().await.len(),
        db.decisions().await.len(),
    );
    let reply = api.send(
        "POST",
        "/api/v1/tenants/1/preview",
        r#"{"at":"2024-03-18T00:05:00Z"}"#,
    );
    let preview = checked("POST", "/api/v1/tenants/{id}/preview", &reply);
    assert_eq!(preview["runs"][0]["outcome"], "previewed");
    assert_eq!(preview["runs"][0]["invoices"][0]["amount"], "7.00");
    assert_eq!(
        (
            db.invoices().await.len(),
            db.runs().await.len(),
            db.decisions().await.len()
        ),
        counts
    );
    let reply = api.send(
        "POST",
        "/api/v1/tenants/1/preview",
        r#"{"at":"next monday"}"#,
    );
    assert_eq!(reply.status, 422);
    checked("POST", "/api/v1/tenants/{id}/preview", &reply);
    let reply = api.send(
        "POST",
        "/api/v1/tenants/77/preview",
        r#"{"at":"2024-03-18T00:05:00Z"}"#,
    );
    assert_eq!(reply.status, 404);
    // Unknown route and wrong method: JSON too.
    let reply = api.get("/api/v1/nothing-here");
    assert_eq!(
        (reply.status, reply.json()["error"].is_string()),
        (404, true)
    );
    let reply = api.send("POST", "/api/v1/tenants/1/settings", "{}");
    assert_eq!(reply.status, 405);
    checked("PUT", "/api/v1/tenants/{id}/settings", &reply);
    daemon.stop();
}

async fn hostile_input_gets_clean_4xx_and_changes_nothing(db: &TestDb) {
    seed(db).await;
    let (_dir, daemon, api) = started(db, Some(TOKEN), "1h", "2024-03-10T00:00:00Z");
    let sql = "1;DROP TABLE tenants;--";
    let encoded = "1%3BDROP%20TABLE%20tenants%3B--";
    for path in [
        format!("/api/v1/tenants/{encoded}/settings"),
        format!("/api/v1/tenants/{encoded}/runs"),
        format!("/api/v1/tenants/{encoded}/invoices"),
        format!("/api/v1/runs/{encoded}"),
        "/api/v1/tenants/1%27%20OR%20%271%27%3D%271/settings".to_owned(),
    ] {
        let reply = api.get(&path);
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
        reply.json();
    }
    let reply =
        api.get("/api/v1/tenants/1/invoices?status=%27%3B%20DROP%20TABLE%20invoices%3B%20--");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["total"], 0);
    for q in [
        "from=1%27%20OR%20%271%27%3D%271",
        "to=%27%3B--",
        "limit=1%3BDROP",
    ] {
        assert_eq!(
            api.get(&format!("/api/v1/tenants/1/invoices?{q}")).status,
            400,
            "{q}"
        );
    }
    for body in [
        format!(r#"{{"schedule":"weekly","timezone":"{sql}"}}"#),
        format!(r#"{{"schedule":"{sql}","timezone":"UTC"}}"#),
        format!(r#"{{"schedule":"biweekly","timezone":"UTC","biweekly_anchor":"{sql}"}}"#),
    ] {
        assert_eq!(
            api.send("PUT", "/api/v1/tenants/1/settings", &body).status,
            422,
            "{body}"
        );
    }
    assert_eq!(
        api.send(
            "POST",
            "/api/v1/tenants/1/preview",
            &format!(r#"{{"at":"{sql}"}}"#)
        )
        .status,
        422
    );
    // Bodies of every shape: nested, binary-ish, huge numbers; never a 5xx.
    for body in [
        "[]",
        "null",
        "1e999",
        "{\"schedule\":{\"$ne\":1}}",
        "\u{0}\u{1}",
        &"[".repeat(10_000),
    ] {
        let status = api.send("PUT", "/api/v1/tenants/1/settings", body).status;
        assert!((400..500).contains(&status), "{body:.40}: {status}");
    }
    // Still all there, unchanged.
    assert_eq!(db.count("SELECT count(*) FROM tenants").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM conversions").await, 3);
    let settings = api.get("/api/v1/tenants/1/settings").json();
    assert_eq!(
        (settings["schedule"].as_str(), settings["timezone"].as_str()),
        (Some("weekly"), Some("UTC"))
    );
    assert_eq!(api.get("/healthz").status, 200);
    daemon.stop();
}

async fn concurrent_puts_last_write_wins_and_one_timer(db: &TestDb) {
    seed(db).await;
    let (_dir, daemon, api) = started(db, Some(TOKEN), "1h", "2024-03-10T00:00:00Z");
    let bodies: Vec<String> = (0..16)
        .map(|i| {
            let (schedule, zone) = [
                ("weekly", "Europe/Paris"),
                ("monthly", "Asia/Tokyo"),
                ("biweekly", "UTC"),
                ("weekly", "America/New_York"),
            ][i % 4];
            format!(r#"{{"schedule":"{schedule}","timezone":"{zone}"}}"#)
        })
        .collect();
    let base = api.base.clone();
    let handles: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|body| {
            let base = base.clone();
            std::thread::spawn(move || {
                Api::new(base, Some(TOKEN))
                    .send("PUT", "/api/v1/tenants/1/settings", &body)
                    .status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let last = api.get("/api/v1/tenants/1/settings").json();
    let stored = (
        last["schedule"].as_str().unwrap().to_owned(),
        last["timezone"].as_str().unwrap().to_owned(),
    );
    assert!(
        bodies
            .iter()
            .any(|b| b.contains(&format!("\"{}\"", stored.0))
                && b.contains(&format!("\"{}\"", stored.1))),
        "{stored:?} is none of the bodies"
    );
    // One timer armed for the one tenant with a schedule, whatever the number of re-arms.
    eventually(
        Duration::from_secs(5),
        "exactly one armed timer",
        || async { metric(&api.get("/metrics").body, "autoinvoice_timers_armed") == 1.0 },
    )
    .await;
    assert!(last["next_run"]["at"].is_string());
    daemon.stop();
}

#[tokio::test]
async fn the_openapi_document_is_valid_json_with_every_route() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/v1/tenants",
        "/api/v1/tenants/{id}/settings",
        "/api/v1/tenants/{id}/runs",
        "/api/v1/runs/{id}",
        "/api/v1/tenants/{id}/invoices",
        "/api/v1/tenants/{id}/preview",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    let _ = BASE_CONFIG;
}

/// The time zones the API accepts are exactly this build's tz database. Regenerate the enum
/// after a chrono-tz upgrade with `AUTOINVOICE_UPDATE_OPENAPI=1 cargo test --test http`.
#[test]
fn the_openapi_time_zones_are_this_builds() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()).collect();
    names.sort_unstable();
    let zone = &mut doc["components"]["schemas"]["SettingsInput"]["properties"]["timezone"];
    if std::env::var("AUTOINVOICE_UPDATE_OPENAPI").is_ok() {
        zone["enum"] = serde_json::json!(names);
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        return;
    }
    let listed: Vec<&str> = zone["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        listed, names,
        "docs/openapi.json lists other zones than this build knows"
    );
}
