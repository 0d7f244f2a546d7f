//! The benchmark: one weekly run by the real engine (prepare → AffiliateActor pool → finish,
//! as the daemon runs it) against the same invoices written by hand-tuned set-based SQL on an
//! identical copy of the data, side by side.
//!
//!     cargo run --release --bin autoinvoice-bench -- --size S --db postgres://postgres@127.0.0.1:5432/postgres
//!     cargo run --release --bin autoinvoice-bench -- --size S --db sqlite:///tmp/bench
//!
//! `--db` names a PostgreSQL server (any existing database on it: the bench creates and
//! drops its own) or an SQLite directory (the bench creates files in it).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use clap::{Parser, ValueEnum};
use rust_decimal::Decimal;
use sea_orm::sqlx::{self, Connection};
use tokio_util::sync::CancellationToken;

use autoinvoice::actors::affiliate::AffiliatePool;
use autoinvoice::config::{Backend, DatabaseSettings, Settings};
use autoinvoice::engine::{Engine, EngineSettings, RunOutcome};
use autoinvoice::schedule::{Schedule, planned_run};
use autoinvoice::store::Store;
use autoinvoice::store::codec::instant_text;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Size {
    /// 2 tenants × 200 affiliates, 20,000 conversions in the period + 20,000 outside (CI smoke).
    Tiny,
    /// 1 tenant, 10,000 affiliates, 1,000,000 conversions in the period + 4,000,000 outside.
    S,
    /// 100 tenants × 1,000 affiliates, 2,000,000 conversions in the period.
    M,
}

#[derive(Parser)]
#[command(about = "autoinvoice engine vs hand-written SQL, on the same data")]
struct Args {
    #[arg(long, value_enum, ignore_case = true, default_value = "tiny")]
    size: Size,
    /// postgres://… (a server) or sqlite:///DIR (a directory).
    #[arg(long)]
    db: String,
    /// Repetitions; the summary gives the median and min–max.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Leave out the conversions outside the period (to measure what they cost).
    #[arg(long)]
    without_outside: bool,
    /// engine.concurrency for the engine's run (default: the config default).
    #[arg(long)]
    concurrency: Option<u32>,
}

struct Shape {
    tenants: i64,
    affiliates: i64,
    in_period: i64,
    outside: i64,
}

impl Size {
    fn shape(self) -> Shape {
        match self {
            Size::Tiny => Shape {
                tenants: 2,
                affiliates: 200,
                in_period: 20_000,
                outside: 20_000,
            },
            Size::S => Shape {
                tenants: 1,
                affiliates: 10_000,
                in_period: 1_000_000,
                outside: 4_000_000,
            },
            Size::M => Shape {
                tenants: 100,
                affiliates: 1_000,
                in_period: 2_000_000,
                outside: 0,
            },
        }
    }
}

/// The run of Monday 2024-03-11 in UTC covers [2024-03-04, 2024-03-11).
const RUN_DATE: (i32, u32, u32) = (2024, 3, 11);
const PERIOD_START: &str = "2024-03-04T00:00:00Z";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("valid").to_utc()
}

/// A deterministic hash of a row number, for a reproducible "random" mix.
fn mix(i: i64, salt: u64) -> u64 {
    let mut h = (i as u64) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The rows of every table, as text fields (`None` = NULL), generated on the fly.
struct Data {
    shape: Shape,
}

impl Data {
    fn affiliate_ids(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (1..=self.shape.tenants).flat_map(move |tenant| {
            (0..self.shape.affiliates).map(move |a| (tenant, tenant * 1_000_000 + a))
        })
    }

    fn tenants(&self) -> Vec<Vec<Option<String>>> {
        (1..=self.shape.tenants)
            .map(|id| {
                vec![
                    Some(id.to_string()),
                    Some(format!("Network {id}")),
                    Some("UTC".into()),
                    Some("weekly".into()),
                    Some("2024-01-01T00:00:00.000000Z".into()),
                ]
            })
            .collect()
    }

    fn affiliates(&self) -> impl Iterator<Item = Vec<Option<String>>> + '_ {
        self.affiliate_ids().map(|(tenant, id)| {
            let status = match mix(id, 1) % 100 {
                0..=89 => "active",
                90..=93 => "inactive",
                94..=96 => "banned",
                _ => "on_moderation",
            };
            vec![
                Some(id.to_string()),
                Some(tenant.to_string()),
                Some(format!("Affiliate {id}")),
                Some(status.into()),
            ]
        })
    }

    /// USD for 95 % of affiliates, EUR for half, JPY for a third; some have two in USD.
    fn payment_systems(&self) -> impl Iterator<Item = Vec<Option<String>>> + '_ {
        self.affiliate_ids().flat_map(|(_, id)| {
            let h = mix(id, 2);
            let mut rows = Vec::new();
            let mut add = |n: i64, currency: &str, main: bool| {
                rows.push(vec![
                    Some((id * 10 + n).to_string()),
                    Some(id.to_string()),
                    Some(currency.into()),
                    Some("wire".into()),
                    Some(if main { "1" } else { "0" }.into()),
                ]);
            };
            if h % 100 < 95 {
                add(0, "USD", !h.is_multiple_of(7));
            }
            if h % 100 < 10 {
                add(1, "USD", false);
            }
            if (h >> 8).is_multiple_of(2) {
                add(2, "EUR", true);
            }
            if (h >> 16).is_multiple_of(3) {
                add(3, "JPY", true);
            }
            rows
        })
    }

    /// 1 % of affiliates have a manual USD invoice over the first two days of the period and
    /// three before it (a partial overlap), with one linked conversion.
    fn overlapping(&self, affiliate: i64) -> bool {
        mix(affiliate, 3).is_multiple_of(100)
    }

    fn invoices(&self) -> impl Iterator<Item = Vec<Option<String>>> + '_ {
        let start = t(PERIOD_START);
        self.affiliate_ids()
            .filter(|&(_, a)| self.overlapping(a))
            .map(move |(tenant, a)| {
                vec![
                    Some(a.to_string()),
                    Some(tenant.to_string()),
                    Some(a.to_string()),
                    Some("USD".into()),
                    Some(instant_text(start - chrono::Duration::days(3))),
                    Some(instant_text(start + chrono::Duration::days(2))),
                    Some("12.00".into()),
                    Some("1".into()),
                    Some("pending".into()),
                    Some("Manual".into()),
                    Some("manual".into()),
                ]
            })
    }

    /// Conversions: `in_period` spread over the period, `outside` over the 40 weeks before,
    /// plus one linked conversion per manual invoice.
    fn conversions(&self, with_outside: bool) -> impl Iterator<Item = Vec<Option<String>>> + '_ {
        let start = t(PERIOD_START);
        let week = 7 * 24 * 3600 * 1_000_000i64;
        let per_tenant = self.shape.tenants * self.shape.affiliates;
        let outside = if with_outside { self.shape.outside } else { 0 };
        let linked = self
            .affiliate_ids()
            .filter(|&(_, a)| self.overlapping(a))
            .map(move |(tenant, a)| {
                row(
                    a,
                    tenant,
                    a,
                    start + chrono::Duration::days(1),
                    "approved",
                    "12.00".into(),
                    "USD",
                    Some(a),
                )
            });
        let regular = (0..self.shape.in_period + outside).map(move |i| {
            let slot = i % per_tenant;
            let tenant = 1 + slot / self.shape.affiliates;
            let affiliate = tenant * 1_000_000 + slot % self.shape.affiliates;
            let h = mix(i, 4);
            let micros = if i < self.shape.in_period {
                (h % week as u64) as i64
            } else {
                -((h % (40 * week) as u64) as i64) - 1
            };
            let at = start + chrono::Duration::microseconds(micros);
            let status = match (h >> 40) % 100 {
                0..=69 => "approved",
                70..=84 => "pending",
                85..=94 => "hold",
                _ => "declined",
            };
            let currency = match (h >> 20) % 10 {
                0..=5 => "USD",
                6..=8 => "EUR",
                _ => "JPY",
            };
            let cents = (h >> 48) % 10_000 + 1;
            let payout = if currency == "JPY" {
                format!("{}", cents)
            } else if (h >> 30).is_multiple_of(50) {
                format!("-{}.{:02}", cents / 100, cents % 100) // a refund
            } else {
                format!("{}.{:02}", cents / 100, cents % 100)
            };
            row(
                10_000_000_000 + i,
                tenant,
                affiliate,
                at,
                status,
                payout,
                currency,
                None,
            )
        });
        linked.chain(regular)
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    id: i64,
    tenant: i64,
    affiliate: i64,
    at: DateTime<Utc>,
    status: &str,
    payout: String,
    currency: &str,
    invoice: Option<i64>,
) -> Vec<Option<String>> {
    vec![
        Some(id.to_string()),
        Some(tenant.to_string()),
        Some(affiliate.to_string()),
        Some(instant_text(at)),
        Some(status.into()),
        Some(payout),
        Some(currency.into()),
        invoice.map(|i| i.to_string()),
    ]
}

const TABLES: [(&str, &str); 5] = [
    (
        "tenants",
        "id, name, timezone, invoice_schedule, schedule_updated_at",
    ),
    ("affiliates", "id, tenant_id, name, status"),
    (
        "payment_systems",
        "id, affiliate_id, currency, method, is_main",
    ),
    (
        "invoices",
        "id, tenant_id, affiliate_id, currency, period_start, period_end, amount, conversions_count, status, comment, source",
    ),
    (
        "conversions",
        "id, tenant_id, affiliate_id, occurred_at, status, payout, currency, invoice_id",
    ),
];

fn rows_of<'a>(
    data: &'a Data,
    table: &str,
    with_outside: bool,
) -> Box<dyn Iterator<Item = Vec<Option<String>>> + 'a> {
    match table {
        "tenants" => Box::new(data.tenants().into_iter()),
        "affiliates" => Box::new(data.affiliates()),
        "payment_systems" => Box::new(data.payment_systems()),
        "invoices" => Box::new(data.invoices()),
        _ => Box::new(data.conversions(with_outside)),
    }
}

/// Loads the dataset: PostgreSQL by COPY, SQLite in one transaction of prepared inserts.
async fn load(backend: Backend, url: &str, data: &Data, with_outside: bool) -> Result<u64, String> {
    let mut rows = 0u64;
    match backend {
        Backend::Postgres => {
            let mut conn = sqlx::postgres::PgConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            for (table, columns) in TABLES {
                let mut copy = conn
                    .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
                    .await
                    .map_err(|e| e.to_string())?;
                let mut buf = String::with_capacity(1 << 20);
                for r in rows_of(data, table, with_outside) {
                    rows += 1;
                    let line: Vec<&str> = r.iter().map(|f| f.as_deref().unwrap_or("\\N")).collect();
                    buf.push_str(&line.join("\t"));
                    buf.push('\n');
                    if buf.len() > (1 << 20) {
                        copy.send(buf.as_bytes()).await.map_err(|e| e.to_string())?;
                        buf.clear();
                    }
                }
                copy.send(buf.as_bytes()).await.map_err(|e| e.to_string())?;
                copy.finish().await.map_err(|e| e.to_string())?;
            }
            for sql in [
                "SELECT setval(pg_get_serial_sequence('invoices', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM invoices))",
                "VACUUM ANALYZE",
            ] {
                sqlx::raw_sql(sql)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Backend::Sqlite => {
            let mut conn = sqlx::sqlite::SqliteConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            // A fixture, not production data: no journal, no fsync, and a cache large enough
            // that the random inserts into the indexes do not thrash SQLite's 2 MiB default.
            sqlx::raw_sql(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -1048576",
            )
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
            let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
            // Prepared multi-row inserts of 25 rows (sqlx binds slow down with many parameters).
            const CHUNK: usize = 25;
            for (table, columns) in TABLES {
                let n = columns.split(',').count();
                let sql_for = |count: usize| {
                    let tuple = |r: usize| {
                        format!(
                            "({})",
                            (1..=n)
                                .map(|c| format!("?{}", r * n + c))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    format!(
                        "INSERT INTO {table} ({columns}) VALUES {}",
                        (0..count).map(tuple).collect::<Vec<_>>().join(", ")
                    )
                };
                let full = sql_for(CHUNK);
                let mut batch: Vec<Vec<Option<String>>> = Vec::with_capacity(CHUNK);
                let mut source = rows_of(data, table, with_outside).peekable();
                while source.peek().is_some() {
                    batch.clear();
                    batch.extend(source.by_ref().take(CHUNK));
                    rows += batch.len() as u64;
                    let sql = if batch.len() == CHUNK {
                        full.clone()
                    } else {
                        sql_for(batch.len())
                    };
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for f in batch.drain(..).flatten() {
                        q = q.bind(f);
                    }
                    q.execute(&mut *tx).await.map_err(|e| e.to_string())?;
                }
            }
            tx.commit().await.map_err(|e| e.to_string())?;
            sqlx::raw_sql("ANALYZE; PRAGMA journal_mode = WAL")
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(rows)
}

/// The same invoices as the engine, in set-based SQL: eligibility as joins, one
/// INSERT … SELECT … GROUP BY for the invoices and one UPDATE … FROM for the links.
fn baseline_sql(backend: Backend) -> String {
    let payment_system = match backend {
        Backend::Postgres => {
            "(SELECT p.id FROM payment_systems p WHERE p.affiliate_id = g.affiliate_id AND p.currency = g.currency ORDER BY p.is_main DESC, p.id LIMIT 1)"
        }
        Backend::Sqlite => {
            "(SELECT p.id FROM payment_systems p WHERE p.affiliate_id = g.affiliate_id AND p.currency = g.currency ORDER BY p.is_main DESC, p.id LIMIT 1)"
        }
    };
    // SQLite has no exact decimal SUM: its baseline sums as REAL, which is exact enough for
    // this dataset's two-decimal payouts (no half-cent totals); the engine sums exactly.
    let total = match backend {
        Backend::Postgres => "sum(c.payout)",
        Backend::Sqlite => "sum(CAST(c.payout AS REAL))",
    };
    let (start, end) = match backend {
        Backend::Postgres => (
            "'2024-03-04T00:00:00Z'::timestamptz",
            "'2024-03-11T00:00:00Z'::timestamptz",
        ),
        Backend::Sqlite => (
            "'2024-03-04T00:00:00.000000Z'",
            "'2024-03-11T00:00:00.000000Z'",
        ),
    };
    let greatest = match backend {
        Backend::Postgres => "greatest",
        Backend::Sqlite => "max",
    };
    let money = match backend {
        Backend::Postgres => "round(g.total, CASE g.currency WHEN 'JPY' THEN 0 ELSE 2 END)",
        // printf keeps the two decimals SQLite's round would drop from the text.
        Backend::Sqlite => {
            "CASE g.currency WHEN 'JPY' THEN printf('%d', CAST(round(g.total, 0) AS INTEGER)) ELSE printf('%.2f', round(g.total, 2)) END"
        }
    };
    let positive = match backend {
        Backend::Postgres => "round(g.total, CASE g.currency WHEN 'JPY' THEN 0 ELSE 2 END) > 0",
        Backend::Sqlite => "round(g.total, CASE g.currency WHEN 'JPY' THEN 0 ELSE 2 END) > 0",
    };
    format!(
        "WITH overlap AS (
            SELECT i.affiliate_id, i.currency,
                   max(CASE WHEN i.period_start <= {start} AND i.period_end >= {end} THEN 1 ELSE 0 END) AS full_cover,
                   max(coalesce((SELECT max(c.occurred_at) FROM conversions c WHERE c.invoice_id = i.id), i.period_end)) AS last_invoiced
              FROM invoices i
             WHERE i.status <> 'declined' AND i.period_start < {end} AND i.period_end > {start}
             GROUP BY i.affiliate_id, i.currency),
         g AS (
            SELECT c.tenant_id, c.affiliate_id, c.currency,
                   {greatest}({start}, coalesce(o.last_invoiced, {start})) AS effective_start,
                   count(*) AS n, {total} AS total
              FROM conversions c
              JOIN affiliates a ON a.id = c.affiliate_id AND a.tenant_id = c.tenant_id AND a.status = 'active'
              LEFT JOIN overlap o ON o.affiliate_id = c.affiliate_id AND o.currency = c.currency
             WHERE c.status = 'approved' AND c.invoice_id IS NULL
               AND c.occurred_at >= {start} AND c.occurred_at < {end}
               AND c.occurred_at >= coalesce(o.last_invoiced, {start})
               AND coalesce(o.full_cover, 0) = 0
             GROUP BY c.tenant_id, c.affiliate_id, c.currency, o.last_invoiced)
         INSERT INTO invoices (tenant_id, affiliate_id, currency, period_start, period_end, amount,
                               conversions_count, status, comment, source, payment_system_id,
                               run_period_start_date, run_period_end_date)
         SELECT g.tenant_id, g.affiliate_id, g.currency, g.effective_start, {end}, {money}, g.n,
                'waiting', 'Created by auto-generation program', 'auto', {payment_system},
                '2024-03-04', '2024-03-11'
           FROM g
          WHERE {payment_system} IS NOT NULL AND {positive};
         UPDATE conversions SET invoice_id = i.id
           FROM invoices i
          WHERE i.source = 'auto' AND i.run_period_start_date = '2024-03-04'
            AND conversions.tenant_id = i.tenant_id AND conversions.affiliate_id = i.affiliate_id
            AND conversions.currency = i.currency AND conversions.status = 'approved'
            AND conversions.invoice_id IS NULL
            AND conversions.occurred_at >= i.period_start AND conversions.occurred_at < i.period_end;"
    )
}

async fn run_baseline(backend: Backend, url: &str) -> Result<Duration, String> {
    let sql = baseline_sql(backend);
    let started = Instant::now();
    match backend {
        Backend::Postgres => {
            let mut conn = sqlx::postgres::PgConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
        }
        Backend::Sqlite => {
            let mut conn = sqlx::sqlite::SqliteConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
        }
    }
    Ok(started.elapsed())
}

/// The engine's run of every tenant, as the daemon executes it: runs in parallel up to
/// `engine.concurrency`, affiliates settled by the AffiliateActor pool.
async fn run_engine(
    store: Store,
    settings: &Settings,
    tenants: i64,
) -> Result<(Duration, u64), String> {
    let engine = Engine::new(store.clone(), EngineSettings::from_settings(settings));
    let pool = AffiliatePool::start(settings.concurrency);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(settings.concurrency as usize));
    let cancel = CancellationToken::new();
    let run_date = NaiveDate::from_ymd_opt(RUN_DATE.0, RUN_DATE.1, RUN_DATE.2).expect("valid");
    let run_time = NaiveTime::from_hms_opt(0, 1, 0).expect("valid");
    reset_peak_rss();
    let started = Instant::now();
    let runs = (1..=tenants).map(|id| {
        let (engine, pool, slots, cancel) =
            (engine.clone(), pool.clone(), slots.clone(), cancel.clone());
        async move {
            let _slot = slots.acquire().await;
            let row = engine
                .store()
                .tenant(id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("tenant vanished")?;
            let schedule = row.schedule().map_err(|e| e.to_string())?;
            let planned = planned_run(Schedule::Weekly, schedule.zone, run_date, run_time);
            let report = engine
                .execute(id, &schedule, &planned, &pool, &cancel)
                .await;
            if report.outcome != RunOutcome::Completed {
                return Err(format!(
                    "tenant {id}: {:?} {:?}",
                    report.outcome, report.error
                ));
            }
            Ok::<u64, String>(report.invoices.len() as u64)
        }
    });
    let created: Vec<Result<u64, String>> = futures_util::future::join_all(runs).await;
    let elapsed = started.elapsed();
    let mut invoices = 0;
    for r in created {
        invoices += r?;
    }
    Ok((elapsed, invoices))
}

/// The invoices of the run, for comparison: (tenant, affiliate, currency, amount, count,
/// start) sorted, and the number of linked conversions.
async fn invoices_of(
    store: &Store,
) -> Result<(Vec<(i64, i64, String, Decimal, i64, String)>, i64), String> {
    let codec = autoinvoice::store::codec::Codec(store.backend());
    let rows = store
        .query(
            "SELECT tenant_id, affiliate_id, currency, amount, conversions_count, period_start
               FROM invoices WHERE source = 'auto' ORDER BY tenant_id, affiliate_id, currency",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push((
            r.try_get("", "tenant_id").map_err(|e| e.to_string())?,
            r.try_get("", "affiliate_id").map_err(|e| e.to_string())?,
            r.try_get::<String>("", "currency")
                .map_err(|e| e.to_string())?
                .trim()
                .to_owned(),
            codec
                .get_money(r, "amount", "invoices")
                .map_err(|e| e.to_string())?
                .normalize(),
            i64::from(
                r.try_get::<i32>("", "conversions_count")
                    .map_err(|e| e.to_string())?,
            ),
            codec
                .get_instant(r, "period_start", "invoices")
                .map_err(|e| e.to_string())?
                .to_rfc3339(),
        ));
    }
    let linked = store
        .query(
            "SELECT count(*) AS n FROM conversions c JOIN invoices i ON i.id = c.invoice_id WHERE i.source = 'auto'",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    let n: i64 = linked[0].try_get("", "n").map_err(|e| e.to_string())?;
    Ok((out, n))
}

/// Resets the process's peak RSS (Linux: `5` into /proc/self/clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

struct Db {
    backend: Backend,
    admin: String,
}

impl Db {
    fn url(&self, name: &str) -> String {
        match self.backend {
            Backend::Postgres => {
                let base = self
                    .admin
                    .rsplit_once('/')
                    .map_or(self.admin.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
            Backend::Sqlite => format!("{}/{name}.db?mode=rwc", self.admin.trim_end_matches('/')),
        }
    }

    async fn admin_exec(&self, sql: &str) -> Result<(), String> {
        let mut conn = sqlx::postgres::PgConnection::connect(&self.admin)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn create_empty(&self, name: &str) -> Result<(), String> {
        match self.backend {
            Backend::Postgres => {
                self.admin_exec(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                self.admin_exec(&format!("CREATE DATABASE {name}")).await
            }
            Backend::Sqlite => {
                let path = self
                    .url(name)
                    .trim_start_matches("sqlite://")
                    .trim_end_matches("?mode=rwc")
                    .to_owned();
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
                Ok(())
            }
        }
    }

    async fn copy(&self, from: &str, to: &str) -> Result<(), String> {
        match self.backend {
            Backend::Postgres => {
                self.admin_exec(&format!("DROP DATABASE IF EXISTS {to} WITH (FORCE)"))
                    .await?;
                self.admin_exec(&format!("CREATE DATABASE {to} TEMPLATE {from}"))
                    .await
            }
            Backend::Sqlite => {
                let path = |n: &str| {
                    self.url(n)
                        .trim_start_matches("sqlite://")
                        .trim_end_matches("?mode=rwc")
                        .to_owned()
                };
                std::fs::copy(path(from), path(to))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn drop_db(&self, name: &str) {
        match self.backend {
            Backend::Postgres => {
                let _ = self
                    .admin_exec(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
            Backend::Sqlite => {
                let _ = self.create_empty(name).await;
            }
        }
    }

    async fn store(&self, name: &str, max_connections: u32) -> Result<Store, String> {
        Store::connect(&DatabaseSettings {
            url: self.url(name),
            backend: self.backend,
            max_connections,
            auto_migrate: false,
        })
        .await
        .map_err(|e| e.to_string())
    }
}

struct Measured {
    engine: f64,
    baseline: f64,
    rss: f64,
}

async fn one_round(
    args: &Args,
    db: &Db,
    settings: &Settings,
    round: u32,
) -> Result<Measured, String> {
    let shape = args.size.shape();
    let tenants = shape.tenants;
    let in_period = shape.in_period;
    let data = Data { shape };
    let tag = std::process::id();
    let (src, eng, base) = (
        format!("bench_src_{tag}"),
        format!("bench_engine_{tag}"),
        format!("bench_base_{tag}"),
    );
    db.create_empty(&src).await?;
    {
        let store = db.store(&src, 2).await?;
        store.migrate().await.map_err(|e| e.to_string())?;
        store
            .connection()
            .clone()
            .close()
            .await
            .map_err(|e| e.to_string())?;
    }
    let loading = Instant::now();
    let rows = load(db.backend, &db.url(&src), &data, !args.without_outside).await?;
    eprintln!(
        "round {round}: loaded {rows} rows in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    db.copy(&src, &eng).await?;
    db.copy(&src, &base).await?;
    db.drop_db(&src).await;

    let store = db.store(&eng, settings.database.max_connections).await?;
    let (engine_time, invoices) = run_engine(store.clone(), settings, tenants).await?;
    let rss = peak_rss_mib();
    let baseline_time = run_baseline(db.backend, &db.url(&base)).await?;
    let base_store = db.store(&base, 2).await?;
    let (mine, linked_mine) = invoices_of(&store).await?;
    let (theirs, linked_theirs) = invoices_of(&base_store).await?;
    let same = mine == theirs && linked_mine == linked_theirs;
    store
        .connection()
        .clone()
        .close()
        .await
        .map_err(|e| e.to_string())?;
    base_store
        .connection()
        .clone()
        .close()
        .await
        .map_err(|e| e.to_string())?;
    db.drop_db(&eng).await;
    db.drop_db(&base).await;
    let (e, b) = (engine_time.as_secs_f64(), baseline_time.as_secs_f64());
    println!(
        "round {round}: engine {e:.3} s, baseline {b:.3} s, ratio {:.2}; {:.0} conversions/s, {:.0} invoices/s (engine); peak RSS {rss:.1} MiB; {invoices} invoices, {linked_mine} conversions linked; same invoices: {}",
        e / b,
        in_period as f64 / e,
        invoices as f64 / e,
        if same { "yes" } else { "NO" }
    );
    if !same {
        let diff: Vec<_> = mine
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        return Err(format!(
            "the engine and the baseline differ: {} vs {} invoices, {linked_mine} vs {linked_theirs} linked; first differences: {diff:?}",
            mine.len(),
            theirs.len()
        ));
    }
    Ok(Measured {
        engine: e,
        baseline: b,
        rss,
    })
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

async fn bench(args: Args) -> Result<(), String> {
    let backend = if args.db.starts_with("sqlite:") {
        Backend::Sqlite
    } else {
        Backend::Postgres
    };
    let admin = match backend {
        Backend::Sqlite => {
            let dir = args
                .db
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
            format!("sqlite://{dir}")
        }
        Backend::Postgres => args.db.clone(),
    };
    let db = Db { backend, admin };
    let mut settings = Settings::from_toml("").map_err(|e| e.to_string())?;
    if let Some(c) = args.concurrency {
        settings.concurrency = c;
    }
    settings.database.max_connections = settings.concurrency + 4;
    println!(
        "size {:?}{}, {:?}, engine.concurrency {}, {} round(s)",
        args.size,
        if args.without_outside {
            " without out-of-period rows"
        } else {
            ""
        },
        backend,
        settings.concurrency,
        args.runs
    );
    let mut results = Vec::new();
    for round in 1..=args.runs {
        results.push(one_round(&args, &db, &settings, round).await?);
    }
    let (e, e_min, e_max) = median(results.iter().map(|r| r.engine).collect());
    let (b, b_min, b_max) = median(results.iter().map(|r| r.baseline).collect());
    let (q, q_min, q_max) = median(results.iter().map(|r| r.engine / r.baseline).collect());
    let (m, m_min, m_max) = median(results.iter().map(|r| r.rss).collect());
    println!(
        "median of {}: engine {e:.3} s ({e_min:.3}–{e_max:.3}), baseline {b:.3} s ({b_min:.3}–{b_max:.3}), ratio {q:.2} ({q_min:.2}–{q_max:.2}), peak RSS {m:.1} MiB ({m_min:.1}–{m_max:.1})",
        results.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,sqlx=error"))
        .try_init();
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    });
    match system.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
