//! Several `run-due` processes started together on one database never create an invoice
//! twice nor link a conversion twice: run claims, the link check and the unique index.

mod common;

use std::collections::HashMap;

use rust_decimal::Decimal;

use common::{Kind, TestDb};

async fn seed(db: &TestDb, affiliates: i64) {
    db.tenant(1, "UTC", "weekly", "2024-01-01T00:00:00Z").await;
    db.tenant(2, "Europe/Paris", "weekly", "2024-01-01T00:00:00Z")
        .await;
    let codec = db.codec();
    for a in 0..affiliates {
        let tenant = 1 + a % 2;
        let id = 1000 + a;
        db.affiliate(id, tenant, "active").await;
        db.payment_system(id, id, "USD", true).await;
        let mut sql = String::from(
            "INSERT INTO conversions (id, tenant_id, affiliate_id, occurred_at, status, payout, currency) VALUES ",
        );
        let mut values = Vec::new();
        // Conversions every 16 hours for four weeks: five due runs per tenant to race over.
        for c in 0..40i64 {
            let n = c as usize * 5;
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, 'approved', ${}, 'USD')",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5
            ));
            values.push((id * 100 + c).into());
            values.push(tenant.into());
            values.push(id.into());
            values.push(
                codec.instant(common::t("2024-02-05T12:00:00Z") + chrono::Duration::hours(c * 16)),
            );
            values.push(codec.money(Decimal::new(c + 1, 2)));
        }
        db.exec(&sql, values).await;
    }
}

async fn race(db: &TestDb, processes: usize, affiliates: i64) {
    seed(db, affiliates).await;
    let children: Vec<_> = (0..processes)
        .map(|_| {
            db.command()
                .args(["run-due", "--now", "2024-03-05T00:00:00Z", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a racing run-due failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Exactly one invoice per (affiliate, currency, run), and its count and amount are the
    // conversions actually linked to it.
    let invoices = db.auto_invoices().await;
    let mut seen = HashMap::new();
    for inv in &invoices {
        let key = (
            inv.affiliate_id,
            inv.currency.clone(),
            inv.run_dates.clone(),
        );
        assert!(
            seen.insert(key, inv.id).is_none(),
            "duplicate invoice {inv:?}"
        );
        let linked = db.linked(inv.id).await;
        assert_eq!(linked.len() as i32, inv.conversions_count, "{inv:?}");
    }
    let linked_total = db
        .count("SELECT count(*) FROM conversions WHERE invoice_id IS NOT NULL")
        .await;
    let counted: i64 = invoices
        .iter()
        .map(|i| i64::from(i.conversions_count))
        .sum();
    assert_eq!(linked_total, counted);
    // Every conversion of the four complete weeks is invoiced: nothing lost either.
    let expected_linked = db
        .count(
            "SELECT count(*) FROM conversions c JOIN tenants t ON t.id = c.tenant_id
              WHERE (t.id = 1 AND c.occurred_at < '2024-03-04T00:00:00.000000Z')
                 OR (t.id = 2 AND c.occurred_at < '2024-03-03T23:00:00.000000Z')",
        )
        .await;
    assert_eq!(linked_total, expected_linked);
    assert_eq!(invoices.len() as i64, affiliates * 4);
    let runs = db.runs().await;
    assert_eq!(runs.len(), 10); // five Mondays in the window, two tenants
    assert!(runs.iter().all(|r| r.2 == "completed"), "{runs:?}");
    assert_eq!(
        db.count("SELECT count(*) FROM invoice_decisions WHERE outcome = 'created'")
            .await,
        affiliates * 4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_run_due_processes_on_postgres() {
    if let Some(db) = TestDb::new(Kind::Postgres).await {
        race(&db, 4, 200).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_run_due_processes_on_sqlite() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    race(&db, 3, 60).await;
}
