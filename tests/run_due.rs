//! SPEC §2 and §3 end to end: seed a real database, run the real binary's `run-due`, read
//! the tables. Every scenario runs on SQLite and on PostgreSQL.

mod common;

use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use common::{TestDb, t};

both_backends!(
    every_rule_end_to_end,
    running_twice_creates_nothing_new,
    catch_up_creates_one_invoice_per_period,
    runs_beyond_the_window_are_recorded_missed_once,
    exact_money_with_large_and_many_small_payouts,
    dst_zones_weekly_biweekly_monthly,
    a_misconfigured_tenant_does_not_stop_the_others,
    preview_writes_nothing,
);

/// Paris, weekly; the run of Monday 2024-04-01 covers [2024-03-24T23:00Z, 2024-03-31T22:00Z)
/// (clocks sprang forward on the 31st). The setting changed on 03-30, so only that run is due.
async fn seed_paris_week(db: &TestDb) {
    db.tenant(1, "Europe/Paris", "weekly", "2024-03-30T00:00:00Z")
        .await;
    db.tenant(2, "UTC", "disabled", "2024-01-01T00:00:00Z")
        .await;
    // 11: created, main payment system wins, boundaries exact.
    db.affiliate(11, 1, "active").await;
    db.payment_system(1, 11, "USD", false).await;
    db.payment_system(3, 11, "USD", true).await;
    db.payment_system(2, 11, "USD", false).await;
    db.conversion(
        1101,
        1,
        11,
        "2024-03-24T23:00:00Z",
        "approved",
        "10.005",
        "USD",
    )
    .await;
    db.conversion(
        1102,
        1,
        11,
        "2024-03-31T21:59:59.999999Z",
        "approved",
        "5.001",
        "USD",
    )
    .await;
    db.conversion(
        1103,
        1,
        11,
        "2024-03-31T22:00:00Z",
        "approved",
        "100",
        "USD",
    )
    .await;
    db.conversion(
        1104,
        1,
        11,
        "2024-03-24T22:59:59.999999Z",
        "approved",
        "100",
        "USD",
    )
    .await;
    db.conversion(1105, 1, 11, "2024-03-26T10:00:00Z", "pending", "50", "USD")
        .await;
    db.conversion(1106, 1, 11, "2024-03-26T10:00:00Z", "hold", "50", "USD")
        .await;
    db.conversion(1107, 1, 11, "2024-03-26T10:00:00Z", "declined", "50", "USD")
        .await;
    // 12: not active.
    db.affiliate(12, 1, "inactive").await;
    db.payment_system(4, 12, "USD", true).await;
    db.conversion(1201, 1, 12, "2024-03-26T10:00:00Z", "approved", "20", "USD")
        .await;
    // 13: no payment system in EUR.
    db.affiliate(13, 1, "active").await;
    db.payment_system(5, 13, "USD", true).await;
    db.conversion(
        1301,
        1,
        13,
        "2024-03-26T10:00:00Z",
        "approved",
        "7.5",
        "EUR",
    )
    .await;
    // 14: non-positive amount.
    db.affiliate(14, 1, "active").await;
    db.payment_system(6, 14, "USD", true).await;
    db.conversion(1401, 1, 14, "2024-03-26T10:00:00Z", "approved", "-3", "USD")
        .await;
    // 15: a completed manual invoice covers the whole period.
    db.affiliate(15, 1, "active").await;
    db.payment_system(7, 15, "USD", true).await;
    db.conversion(1501, 1, 15, "2024-03-26T10:00:00Z", "approved", "9", "USD")
        .await;
    db.manual_invoice(
        1,
        15,
        "USD",
        "2024-03-20T00:00:00Z",
        "2024-04-05T00:00:00Z",
        "completed",
    )
    .await;
    // 16: partial overlap: the new invoice starts at the last conversion already invoiced.
    db.affiliate(16, 1, "active").await;
    db.payment_system(8, 16, "USD", true).await;
    let manual = db
        .manual_invoice(
            1,
            16,
            "USD",
            "2024-03-20T00:00:00Z",
            "2024-03-27T00:00:00Z",
            "waiting",
        )
        .await;
    db.conversion(1600, 1, 16, "2024-03-26T10:00:00Z", "approved", "1", "USD")
        .await;
    db.link(1600, manual).await;
    db.conversion(1601, 1, 16, "2024-03-25T10:00:00Z", "approved", "2", "USD")
        .await; // left
    db.conversion(1602, 1, 16, "2024-03-26T10:00:00Z", "approved", "4", "USD")
        .await; // taken (same instant)
    db.conversion(1603, 1, 16, "2024-03-29T10:00:00Z", "approved", "8", "USD")
        .await; // taken
    // 17: a declined invoice covering the period does not count.
    db.affiliate(17, 1, "active").await;
    db.payment_system(9, 17, "USD", true).await;
    db.conversion(
        1701,
        1,
        17,
        "2024-03-26T10:00:00Z",
        "approved",
        "3.3",
        "USD",
    )
    .await;
    db.manual_invoice(
        1,
        17,
        "USD",
        "2024-03-01T00:00:00Z",
        "2024-05-01T00:00:00Z",
        "declined",
    )
    .await;
    // 18: several currencies, each rounded to its own minor unit.
    db.affiliate(18, 1, "active").await;
    db.payment_system(10, 18, "JPY", true).await;
    db.payment_system(11, 18, "KWD", false).await;
    db.conversion(
        1801,
        1,
        18,
        "2024-03-26T10:00:00Z",
        "approved",
        "100.5",
        "JPY",
    )
    .await;
    db.conversion(
        1802,
        1,
        18,
        "2024-03-26T10:00:00Z",
        "approved",
        "1.0005",
        "KWD",
    )
    .await;
    // 19: nothing payable: no invoice and no decision.
    db.affiliate(19, 1, "active").await;
    db.payment_system(12, 19, "USD", true).await;
    db.conversion(1901, 1, 19, "2024-03-26T10:00:00Z", "pending", "10", "USD")
        .await;
    // Bad data: tenant 1's conversion names tenant 2's affiliate; never invoiced.
    db.affiliate(21, 2, "active").await;
    db.payment_system(13, 21, "USD", true).await;
    db.conversion(2101, 1, 21, "2024-03-26T10:00:00Z", "approved", "10", "USD")
        .await;
}

const PARIS_NOW: &str = "2024-04-01T00:00:00Z";

async fn every_rule_end_to_end(db: &TestDb) {
    seed_paris_week(db).await;
    let report = db.run_due_ok(PARIS_NOW);
    let runs = &report["tenants"][0]["runs"];
    assert_eq!(runs.as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(runs[0]["outcome"], "completed");
    assert_eq!(runs[0]["bad_conversions"], 1);

    let invoices = db.auto_invoices().await;
    let summary: Vec<_> = invoices
        .iter()
        .map(|i| {
            (
                i.affiliate_id,
                i.currency.as_str(),
                i.amount,
                i.conversions_count,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (11, "USD", dec!(15.01), 2),
            (16, "USD", dec!(12.00), 2),
            (17, "USD", dec!(3.30), 1),
            (18, "JPY", dec!(101), 1),
            (18, "KWD", dec!(1.001), 1),
        ]
    );
    let first = &invoices[0];
    assert_eq!(first.status, "waiting");
    assert_eq!(first.comment, "Created by auto-generation program");
    assert_eq!(first.payment_system_id, Some(3));
    assert_eq!(first.period_start, t("2024-03-24T23:00:00Z"));
    assert_eq!(first.period_end, t("2024-03-31T22:00:00Z"));
    assert_eq!(
        first.run_dates,
        Some(("2024-03-25".into(), "2024-04-01".into()))
    );
    assert!(first.run_id.is_some());
    assert_eq!(db.linked(first.id).await, [1101, 1102]);
    let partial = &invoices[1];
    assert_eq!(partial.period_start, t("2024-03-26T10:00:00Z"));
    assert_eq!(db.linked(partial.id).await, [1602, 1603]);
    assert_eq!(invoices[3].payment_system_id, Some(10));

    let decisions = db.decisions().await;
    let skipped: Vec<_> = decisions
        .iter()
        .filter(|d| d.2 == "skipped")
        .map(|d| (d.0, d.1.as_str(), d.3.as_deref().unwrap(), d.4))
        .collect();
    assert_eq!(
        skipped,
        [
            (12, "USD", "not_active", None),
            (13, "EUR", "no_payment_system", Some(dec!(7.50))),
            (14, "USD", "non_positive_amount", Some(dec!(-3.00))),
            (15, "USD", "already_invoiced", None),
        ]
    );
    assert_eq!(decisions.iter().filter(|d| d.2 == "created").count(), 5);
    assert!(decisions.iter().all(|d| d.0 != 19 && d.0 != 21));
    // Nothing else was linked; the bad-data conversion stays payable and untouched.
    assert_eq!(
        db.count("SELECT count(*) FROM conversions WHERE invoice_id IS NOT NULL")
            .await,
        2 + 2 + 1 + 1 + 1 + 1
    );
    assert_eq!(
        db.runs().await,
        [("2024-03-25".into(), "2024-04-01".into(), "completed".into())]
    );
}

async fn running_twice_creates_nothing_new(db: &TestDb) {
    seed_paris_week(db).await;
    db.run_due_ok(PARIS_NOW);
    let invoices = db.invoices().await;
    let decisions = db.decisions().await;
    let again = db.run_due_ok(PARIS_NOW);
    assert_eq!(
        again["tenants"][0]["runs"].as_array().unwrap().len(),
        0,
        "{again:#}"
    );
    let later = db.run_due_ok("2024-04-03T12:00:00Z");
    assert_eq!(later["tenants"][0]["runs"].as_array().unwrap().len(), 0);
    assert_eq!(db.invoices().await, invoices);
    assert_eq!(db.decisions().await, decisions);
}

async fn catch_up_creates_one_invoice_per_period(db: &TestDb) {
    // Weekly in UTC since January; one conversion in each of six weeks.
    db.tenant(1, "UTC", "weekly", "2024-01-01T00:00:00Z").await;
    db.affiliate(11, 1, "active").await;
    db.payment_system(1, 11, "USD", true).await;
    for week in 0..6 {
        let at = t("2024-02-05T12:00:00Z") + chrono::Duration::weeks(week);
        db.conversion(
            100 + week,
            1,
            11,
            &at.to_rfc3339(),
            "approved",
            "1.25",
            "USD",
        )
        .await;
    }
    // Down since before the run of Feb 12; back on Mar 15: five Mondays inside 35 days.
    let report = db.run_due_ok("2024-03-15T00:00:00Z");
    let runs = report["tenants"][0]["runs"].as_array().unwrap();
    let periods: Vec<_> = runs
        .iter()
        .map(|r| r["period_start_date"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        periods,
        [
            "2024-02-05",
            "2024-02-12",
            "2024-02-19",
            "2024-02-26",
            "2024-03-04"
        ]
    );
    let invoices = db.auto_invoices().await;
    assert_eq!(invoices.len(), 5);
    for (i, inv) in invoices.iter().enumerate() {
        assert_eq!(inv.amount, dec!(1.25));
        assert_eq!(
            inv.period_start,
            t("2024-02-05T00:00:00Z") + chrono::Duration::weeks(i as i64)
        );
        assert_eq!(db.linked(inv.id).await, [100 + i as i64]);
    }
    assert!(db.runs().await.iter().all(|r| r.2 == "completed"));
}

async fn runs_beyond_the_window_are_recorded_missed_once(db: &TestDb) {
    db.tenant(1, "UTC", "weekly", "2024-01-01T00:00:00Z").await;
    db.affiliate(11, 1, "active").await;
    db.payment_system(1, 11, "USD", true).await;
    db.conversion(100, 1, 11, "2024-02-06T12:00:00Z", "approved", "5", "USD")
        .await;
    db.run_due_ok("2024-01-08T00:05:00Z"); // the runs of Jan 1 and Jan 8
    // Back 60 days later: the runs of Jan 15, 22 and 29 are older than 35 days: missed.
    let report = db.run_due_ok("2024-03-08T00:05:00Z");
    let missed: Vec<_> = report["tenants"][0]["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["period_end_date"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(missed, ["2024-01-15", "2024-01-22", "2024-01-29"]);
    let executed = report["tenants"][0]["runs"].as_array().unwrap().len();
    assert_eq!(executed, 5); // Feb 5 (00:01, inside the window by 3 days), 12, 19, 26, Mar 4
    // The conversion of the week of Feb 5 was invoiced by the Feb 12 run, inside the window.
    assert_eq!(db.auto_invoices().await.len(), 1);
    let again = db.run_due_ok("2024-03-08T00:06:00Z");
    assert!(
        again["tenants"][0]["missed"].as_array().unwrap().is_empty(),
        "recorded once"
    );
    let statuses: Vec<_> = db.runs().await.into_iter().map(|r| r.2).collect();
    assert_eq!(
        statuses,
        [
            "completed",
            "completed",
            "missed",
            "missed",
            "missed",
            "completed",
            "completed",
            "completed",
            "completed",
            "completed"
        ]
    );
}

async fn exact_money_with_large_and_many_small_payouts(db: &TestDb) {
    db.tenant(1, "UTC", "monthly", "2024-01-01T00:00:00Z").await;
    db.affiliate(11, 1, "active").await;
    db.payment_system(1, 11, "USD", true).await;
    db.payment_system(2, 11, "JPY", true).await;
    for i in 0..3 {
        db.conversion(
            10 + i,
            1,
            11,
            "2024-02-10T00:00:00Z",
            "approved",
            "12345678901234.123456",
            "USD",
        )
        .await;
    }
    // 100,000 payouts of 0.000005 JPY: exactly 0.5, which rounds away from zero to 1 yen.
    // A float sum lands a hair off 0.5 and would round either way.
    let codec = db.codec();
    let payout: Decimal = dec!(0.000005);
    for chunk in 0..100 {
        let mut sql = String::from(
            "INSERT INTO conversions (id, tenant_id, affiliate_id, occurred_at, status, payout, currency) VALUES ",
        );
        let mut values = Vec::new();
        for i in 0..1000 {
            let id = 1_000_000 + chunk * 1000 + i;
            let n = i as usize * 3;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, 1, 11, ${}, 'approved', ${}, 'JPY')",
                n + 1,
                n + 2,
                n + 3
            ));
            values.push(id.into());
            values.push(codec.instant(t("2024-02-15T00:00:00Z") + chrono::Duration::seconds(i)));
            values.push(codec.money(payout));
        }
        db.exec(&sql, values).await;
    }
    db.run_due_ok("2024-03-01T00:05:00Z");
    let invoices = db.auto_invoices().await;
    let by_currency: Vec<_> = invoices
        .iter()
        .map(|i| (i.currency.as_str(), i.amount, i.conversions_count))
        .collect();
    assert_eq!(
        by_currency,
        [
            ("JPY", dec!(1), 100_000),
            ("USD", dec!(37037036703702.37), 3)
        ]
    );
    assert_eq!(db.linked(invoices[0].id).await.len(), 100_000);
}

async fn dst_zones_weekly_biweekly_monthly(db: &TestDb) {
    // Paris weekly across the autumn change; Sydney biweekly across its spring change;
    // Asuncion monthly into the October 2023 day whose midnight does not exist.
    db.tenant(1, "Europe/Paris", "weekly", "2023-10-25T00:00:00Z")
        .await;
    db.tenant(2, "Australia/Sydney", "biweekly", "2023-09-25T00:00:00Z")
        .await;
    db.tenant(3, "America/Asuncion", "monthly", "2023-09-20T00:00:00Z")
        .await;
    for (tenant, affiliate) in [(1, 11), (2, 21), (3, 31)] {
        db.affiliate(affiliate, tenant, "active").await;
        db.payment_system(affiliate, affiliate, "USD", true).await;
    }
    // Paris: week of Mon 2023-10-23 = [10-22T22:00Z, 10-29T23:00Z) (169 h).
    db.conversion(110, 1, 11, "2023-10-22T21:59:59Z", "approved", "1", "USD")
        .await; // before
    db.conversion(111, 1, 11, "2023-10-22T22:00:00Z", "approved", "2", "USD")
        .await; // first instant
    db.conversion(112, 1, 11, "2023-10-29T22:30:00Z", "approved", "4", "USD")
        .await; // 23:30 CET Sunday
    // Sydney: anchor 2024-01-01 → Mondays 2023-09-25, 10-09; the run of 10-09 covers
    // [09-25 00:00 AEST, 10-09 00:00 AEDT) = [09-24T14:00Z, 10-08T13:00Z).
    db.conversion(211, 2, 21, "2023-09-24T14:00:00Z", "approved", "8", "USD")
        .await;
    db.conversion(212, 2, 21, "2023-10-08T12:59:59Z", "approved", "16", "USD")
        .await;
    db.conversion(213, 2, 21, "2023-10-08T13:00:00Z", "approved", "32", "USD")
        .await; // next period
    // Asuncion: September 2023 = [09-01T04:00Z, 10-01T04:00Z); run at 10-01T04:00Z.
    db.conversion(311, 3, 31, "2023-10-01T03:59:59Z", "approved", "64", "USD")
        .await;
    db.conversion(312, 3, 31, "2023-10-01T04:00:00Z", "approved", "128", "USD")
        .await; // October
    let report = db.run_due_ok("2023-10-30T12:00:00Z");
    let invoices = db.auto_invoices().await;
    let got: Vec<_> = invoices
        .iter()
        .map(|i| (i.tenant_id, i.amount, i.period_start, i.period_end))
        .collect();
    assert!(
        got.contains(&(
            1,
            dec!(6.00),
            t("2023-10-22T22:00:00Z"),
            t("2023-10-29T23:00:00Z")
        )),
        "{got:?}"
    );
    assert!(
        got.contains(&(
            2,
            dec!(24.00),
            t("2023-09-24T14:00:00Z"),
            t("2023-10-08T13:00:00Z")
        )),
        "{got:?}"
    );
    assert!(
        got.contains(&(
            3,
            dec!(64.00),
            t("2023-09-01T04:00:00Z"),
            t("2023-10-01T04:00:00Z")
        )),
        "{got:?}"
    );
    // Sydney's next biweekly run (Oct 23) is due too and takes the conversion at its start.
    assert!(
        got.contains(&(
            2,
            dec!(32.00),
            t("2023-10-08T13:00:00Z"),
            t("2023-10-22T13:00:00Z")
        )),
        "{got:?}"
    );
    assert_eq!(got.len(), 4, "{got:?}");
    let paris_due = common::json_instant(&report["tenants"][0]["runs"][0]["due_at"]);
    assert_eq!(paris_due, t("2023-10-29T23:01:00Z"));
    let asuncion_due = common::json_instant(&report["tenants"][2]["runs"][0]["due_at"]);
    assert_eq!(asuncion_due, t("2023-10-01T04:00:00Z"));
}

async fn a_misconfigured_tenant_does_not_stop_the_others(db: &TestDb) {
    db.tenant(1, "Mars/Olympus", "weekly", "2024-01-01T00:00:00Z")
        .await;
    db.tenant(2, "UTC", "fortnightly", "2024-01-01T00:00:00Z")
        .await;
    db.tenant(3, "UTC", "weekly", "2024-01-01T00:00:00Z").await;
    db.exec("UPDATE tenants SET biweekly_anchor = '2024-01-02', invoice_schedule = 'biweekly' WHERE id = 2", vec![])
        .await;
    db.affiliate(31, 3, "active").await;
    db.payment_system(1, 31, "USD", true).await;
    db.conversion(1, 3, 31, "2024-03-05T00:00:00Z", "approved", "5", "USD")
        .await;
    let out = db.run_due("2024-03-11T00:05:00Z");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tenant 1 misconfigured: unknown time zone \"Mars/Olympus\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("tenant 2 misconfigured: biweekly anchor 2024-01-02 is a Tue"),
        "{stderr}"
    );
    assert_eq!(db.auto_invoices().await.len(), 1);
}

async fn preview_writes_nothing(db: &TestDb) {
    seed_paris_week(db).await;
    let before = (db.invoices().await, db.decisions().await, db.runs().await);
    let out = db
        .command()
        .args(["preview", "--tenant", "1", "--at", PARIS_NOW, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &report["tenants"][0]["runs"][0];
    assert_eq!(run["outcome"], "previewed");
    assert_eq!(run["invoices"].as_array().unwrap().len(), 5);
    assert_eq!(run["invoices"][0]["amount"], "15.01");
    assert_eq!(run["skips"].as_array().unwrap().len(), 4);
    assert_eq!(
        (db.invoices().await, db.decisions().await, db.runs().await),
        before
    );
    // The text form names what would happen.
    let text = db
        .command()
        .args(["preview", "--tenant", "1", "--at", PARIS_NOW])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("would create invoice"), "{text}");
    assert!(text.contains("not_active"), "{text}");
}
