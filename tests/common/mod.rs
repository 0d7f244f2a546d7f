//! Test harness: a fresh real database per test (an SQLite file, or a PostgreSQL database
//! created on the server named by `AUTOINVOICE_TEST_PG_URL`), seeding helpers, and the real
//! binary to drive.
//!
//! Without a reachable PostgreSQL the PostgreSQL tests say so on stderr and pass as skipped;
//! under CI (`CI=true`) they fail instead.

#![allow(dead_code)]

pub mod daemon;
pub mod openapi;
pub mod pgcluster;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::Value;

use autoinvoice::config::{Backend, DatabaseSettings};
use autoinvoice::store::Store;
use autoinvoice::store::codec::{Codec, parse_instant};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Which back-end a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A throwaway database, removed on drop.
pub struct TestDb {
    pub url: String,
    pub store: Store,
    pub kind: Kind,
    dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
    config: PathBuf,
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn settings(url: &str, backend: Backend) -> DatabaseSettings {
    DatabaseSettings {
        url: url.to_owned(),
        backend,
        max_connections: 5,
        auto_migrate: true,
    }
}

impl TestDb {
    /// A fresh, migrated database of the given kind; `None` when PostgreSQL is unreachable
    /// outside CI.
    pub async fn new(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Sqlite => Some(Self::sqlite().await),
            Kind::Postgres => Self::postgres().await,
        }
    }

    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
        let store = Store::connect(&settings(&url, Backend::Sqlite))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let config = dir.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        Self {
            url,
            store,
            kind: Kind::Sqlite,
            dir: Some(dir),
            pg: None,
            config,
        }
    }

    pub async fn postgres() -> Option<Self> {
        let admin =
            std::env::var("AUTOINVOICE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
        Self::postgres_at(&admin).await
    }

    /// A fresh database on the PostgreSQL server at `admin` (a URL to an existing database).
    pub async fn postgres_at(admin: &str) -> Option<Self> {
        let admin = admin.to_owned();
        let admin_store = match Store::connect(&settings(&admin, Backend::Postgres)).await {
            Ok(s) => s,
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("PostgreSQL is required under CI but unreachable at {admin}: {e}");
                }
                eprintln!("\n*** SKIPPING PostgreSQL test: {admin} unreachable ({e}) ***\n");
                return None;
            }
        };
        let name = format!(
            "autoinvoice_t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            Utc::now().timestamp_subsec_nanos()
        );
        admin_store
            .execute(&format!("CREATE DATABASE {name}"), vec![])
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let url = format!("{base}/{name}");
        let store = Store::connect(&settings(&url, Backend::Postgres))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        Some(Self {
            url,
            store,
            kind: Kind::Postgres,
            dir: Some(dir),
            pg: Some((admin, name)),
            config,
        })
    }

    pub fn codec(&self) -> Codec {
        Codec(self.store.backend())
    }

    pub async fn exec(&self, sql: &str, values: Vec<Value>) {
        self.store.execute(sql, values).await.unwrap();
    }

    pub async fn tenant(&self, id: i64, tz: &str, schedule: &str, updated_at: &str) {
        self.exec(
            "INSERT INTO tenants (id, name, timezone, invoice_schedule, schedule_updated_at)
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                id.into(),
                format!("Tenant {id}").into(),
                tz.into(),
                schedule.into(),
                self.codec().instant(t(updated_at)),
            ],
        )
        .await;
    }

    pub async fn affiliate(&self, id: i64, tenant: i64, status: &str) {
        self.exec(
            "INSERT INTO affiliates (id, tenant_id, name, status) VALUES ($1, $2, $3, $4)",
            vec![
                id.into(),
                tenant.into(),
                format!("Affiliate {id}").into(),
                status.into(),
            ],
        )
        .await;
    }

    pub async fn payment_system(&self, id: i64, affiliate: i64, currency: &str, is_main: bool) {
        self.exec(
            "INSERT INTO payment_systems (id, affiliate_id, currency, method, is_main)
             VALUES ($1, $2, $3, 'paypal', $4)",
            vec![id.into(), affiliate.into(), currency.into(), is_main.into()],
        )
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn conversion(
        &self,
        id: i64,
        tenant: i64,
        affiliate: i64,
        at: &str,
        status: &str,
        payout: &str,
        currency: &str,
    ) {
        self.exec(
            "INSERT INTO conversions (id, tenant_id, affiliate_id, occurred_at, status, payout, currency)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            vec![
                id.into(),
                tenant.into(),
                affiliate.into(),
                self.codec().instant(t(at)),
                status.into(),
                self.codec().money(payout.parse::<Decimal>().unwrap()),
                currency.into(),
            ],
        )
        .await;
    }

    /// A manual invoice; returns its id.
    pub async fn manual_invoice(
        &self,
        tenant: i64,
        affiliate: i64,
        currency: &str,
        start: &str,
        end: &str,
        status: &str,
    ) -> i64 {
        let rows = self
            .store
            .query(
                "INSERT INTO invoices (tenant_id, affiliate_id, currency, period_start, period_end,
                                       amount, conversions_count, status, comment, source)
                 VALUES ($1, $2, $3, $4, $5, $6, 0, $7, 'manual', 'manual') RETURNING id",
                vec![
                    tenant.into(),
                    affiliate.into(),
                    currency.into(),
                    self.codec().instant(t(start)),
                    self.codec().instant(t(end)),
                    self.codec().money(Decimal::ONE),
                    status.into(),
                ],
            )
            .await
            .unwrap();
        rows[0].try_get("", "id").unwrap()
    }

    /// Active affiliates of `tenant` with the given ids, each with a USD payment system and
    /// one approved USD conversion at `at` (payment system and conversion ids = the
    /// affiliate's; payout = the id in cents), in a few multi-row inserts.
    pub async fn bulk_affiliates(&self, tenant: i64, ids: &[i64], at: &str) {
        let codec = self.codec();
        for chunk in ids.chunks(500) {
            let rows = |cols: usize| {
                (0..chunk.len())
                    .map(|r| {
                        let p: Vec<String> =
                            (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
                        format!("({})", p.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            self.exec(
                &format!(
                    "INSERT INTO affiliates (id, tenant_id, name, status) VALUES {}",
                    rows(4)
                ),
                chunk
                    .iter()
                    .flat_map(|&id| [id.into(), tenant.into(), "a".into(), "active".into()])
                    .collect(),
            )
            .await;
            self.exec(
                &format!(
                    "INSERT INTO payment_systems (id, affiliate_id, currency) VALUES {}",
                    rows(3)
                ),
                chunk
                    .iter()
                    .flat_map(|&id| [id.into(), id.into(), "USD".into()])
                    .collect(),
            )
            .await;
            self.exec(
                &format!(
                    "INSERT INTO conversions (id, tenant_id, affiliate_id, occurred_at, status, payout, currency) VALUES {}",
                    rows(7)
                ),
                chunk
                    .iter()
                    .flat_map(|&id| {
                        [
                            id.into(),
                            tenant.into(),
                            id.into(),
                            codec.instant(t(at)),
                            "approved".into(),
                            codec.money(Decimal::new(id, 2)),
                            "USD".into(),
                        ]
                    })
                    .collect(),
            )
            .await;
        }
    }

    pub async fn link(&self, conversion: i64, invoice: i64) {
        self.exec(
            "UPDATE conversions SET invoice_id = $1 WHERE id = $2",
            vec![invoice.into(), conversion.into()],
        )
        .await;
    }

    /// The real binary, with this database and an empty config file.
    pub fn command(&self) -> Command {
        let mut cmd = binary();
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--database-url")
            .arg(&self.url);
        cmd
    }

    /// `run-due --now NOW --json`, returning the process output.
    pub fn run_due(&self, now: &str) -> Output {
        self.command()
            .args(["run-due", "--now", now, "--json"])
            .output()
            .unwrap()
    }

    /// `run-due` that must succeed; returns its JSON.
    pub fn run_due_ok(&self, now: &str) -> serde_json::Value {
        let out = self.run_due(now);
        assert!(
            out.status.success(),
            "run-due failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub async fn invoices(&self) -> Vec<InvoiceRec> {
        let codec = self.codec();
        let rows = self
            .store
            .query(
                "SELECT id, tenant_id, affiliate_id, currency, period_start, period_end, amount,
                        conversions_count, status, comment, source, payment_system_id, run_id,
                        CAST(run_period_start_date AS TEXT) AS rs, CAST(run_period_end_date AS TEXT) AS re
                   FROM invoices ORDER BY id",
                vec![],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| InvoiceRec {
                id: r.try_get("", "id").unwrap(),
                tenant_id: r.try_get("", "tenant_id").unwrap(),
                affiliate_id: r.try_get("", "affiliate_id").unwrap(),
                currency: r
                    .try_get::<String>("", "currency")
                    .unwrap()
                    .trim()
                    .to_owned(),
                period_start: codec.get_instant(r, "period_start", "invoices").unwrap(),
                period_end: codec.get_instant(r, "period_end", "invoices").unwrap(),
                amount: codec.get_money(r, "amount", "invoices").unwrap(),
                conversions_count: r.try_get("", "conversions_count").unwrap(),
                status: r.try_get("", "status").unwrap(),
                comment: r.try_get("", "comment").unwrap(),
                source: r.try_get("", "source").unwrap(),
                payment_system_id: r.try_get("", "payment_system_id").unwrap(),
                run_id: r.try_get("", "run_id").unwrap(),
                run_dates: r
                    .try_get::<Option<String>>("", "rs")
                    .unwrap()
                    .map(|s| (s, r.try_get::<String>("", "re").unwrap())),
            })
            .collect()
    }

    pub async fn auto_invoices(&self) -> Vec<InvoiceRec> {
        self.invoices()
            .await
            .into_iter()
            .filter(|i| i.source == "auto")
            .collect()
    }

    /// Ids of the conversions linked to an invoice, ascending.
    pub async fn linked(&self, invoice: i64) -> Vec<i64> {
        let rows = self
            .store
            .query(
                "SELECT id FROM conversions WHERE invoice_id = $1 ORDER BY id",
                vec![invoice.into()],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.try_get("", "id").unwrap()).collect()
    }

    /// (affiliate, currency, outcome, reason, amount) of every decision, sorted.
    pub async fn decisions(&self) -> Vec<(i64, String, String, Option<String>, Option<Decimal>)> {
        let codec = self.codec();
        let rows = self
            .store
            .query(
                "SELECT affiliate_id, currency, outcome, reason, amount FROM invoice_decisions
                  ORDER BY affiliate_id, currency, outcome",
                vec![],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                (
                    r.try_get("", "affiliate_id").unwrap(),
                    r.try_get::<String>("", "currency")
                        .unwrap()
                        .trim()
                        .to_owned(),
                    r.try_get("", "outcome").unwrap(),
                    r.try_get("", "reason").unwrap(),
                    codec
                        .get_opt_money(r, "amount", "invoice_decisions")
                        .unwrap(),
                )
            })
            .collect()
    }

    /// (period_start_date, period_end_date, status) of every run, by due time.
    pub async fn runs(&self) -> Vec<(String, String, String)> {
        let rows = self
            .store
            .query(
                "SELECT CAST(period_start_date AS TEXT) AS s, CAST(period_end_date AS TEXT) AS e, status
                   FROM invoice_runs ORDER BY due_at",
                vec![],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                (
                    r.try_get("", "s").unwrap(),
                    r.try_get("", "e").unwrap(),
                    r.try_get("", "status").unwrap(),
                )
            })
            .collect()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let rows = self.store.query(sql, vec![]).await.unwrap();
        rows[0].try_get_by_index::<i64>(0).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs inside the test's runtime: drop the database from a thread of its own.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(s) = Store::connect(&settings(&admin, Backend::Postgres)).await {
                        let _ = s
                            .execute(
                                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                                vec![],
                            )
                            .await;
                    }
                });
            })
            .join()
            .ok();
        }
        drop(self.dir.take());
    }
}

/// One invoice as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct InvoiceRec {
    pub id: i64,
    pub tenant_id: i64,
    pub affiliate_id: i64,
    pub currency: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub amount: Decimal,
    pub conversions_count: i32,
    pub status: String,
    pub comment: String,
    pub source: String,
    pub payment_system_id: Option<i64>,
    pub run_id: Option<i64>,
    pub run_dates: Option<(String, String)>,
}

/// Runs a scenario on SQLite and on PostgreSQL, as two tests.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::new($crate::common::Kind::Sqlite).await.unwrap();
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::common::TestDb::new($crate::common::Kind::Postgres).await {
                        super::$name(&db).await;
                    }
                }
            )*
        }
    };
}

/// The real `autoinvoice` binary, with none of this environment's settings leaking in
/// (AUTOINVOICE*, RUST_LOG, systemd's NOTIFY_SOCKET and WATCHDOG_*).
pub fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoinvoice"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AUTOINVOICE")
            || k == "RUST_LOG"
            || k.starts_with("NOTIFY_SOCKET")
            || k.starts_with("WATCHDOG")
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Parses an instant from a JSON string field.
pub fn json_instant(v: &serde_json::Value) -> DateTime<Utc> {
    parse_instant(v.as_str().unwrap()).unwrap()
}
