//! `autoinvoice demo`: seeds a small, realistic dataset (once), runs what is due now, and
//! prints the invoices and skips. The README's first command.

use std::process::ExitCode;

use chrono::{DateTime, Datelike, Duration, DurationRound, Utc, Weekday};
use rust_decimal::Decimal;
use sea_orm::Value;

use crate::commands::{CliError, open_store, render_text};
use crate::config::{Settings, redact_url};
use crate::engine::{Engine, EngineSettings};
use crate::schedule::{TimeZone, start_of_day};
use crate::store::Store;
use crate::store::codec::Codec;

/// Demo tenants: id, name, time zone, schedule, currencies their affiliates earn in.
const TENANTS: &[(i64, &str, &str, &str, &[&str])] = &[
    (
        1,
        "Paris Network",
        "Europe/Paris",
        "weekly",
        &["EUR", "USD"],
    ),
    (
        2,
        "New York Partners",
        "America/New_York",
        "monthly",
        &["USD"],
    ),
    (3, "Tokyo Ads", "Asia/Tokyo", "biweekly", &["JPY", "USD"]),
    (
        4,
        "Kathmandu Leads",
        "Asia/Kathmandu",
        "weekly",
        &["USD", "KWD"],
    ),
    (
        5,
        "Asuncion Media",
        "America/Asuncion",
        "monthly",
        &["PYG", "USD"],
    ),
    (6, "Broken Timezone Inc", "Mars/Olympus", "weekly", &["USD"]),
    (7, "Quiet Network", "UTC", "disabled", &["USD"]),
];

/// Affiliate statuses, cycled: mostly active, one of each other status.
const STATUSES: &[&str] = &[
    "active",
    "active",
    "inactive",
    "active",
    "banned",
    "active",
    "on_moderation",
];
const CONVERSION_STATUSES: &[&str] = &[
    "approved", "approved", "approved", "pending", "hold", "declined",
];

/// A tiny deterministic generator, so every fresh demo shows the same kind of data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// Runs the demo.
pub async fn run(settings: &Settings) -> Result<ExitCode, CliError> {
    let store = open_store(settings).await?;
    let runtime = |e: crate::store::StoreError| CliError::Runtime(e.to_string());
    let now = Utc::now()
        .duration_trunc(Duration::seconds(1))
        .unwrap_or_else(|_| Utc::now());
    let seeded = store
        .query(
            "SELECT count(*) AS n FROM tenants WHERE id BETWEEN 1 AND 7",
            vec![],
        )
        .await
        .map_err(runtime)?
        .first()
        .and_then(|r| r.try_get::<i64>("", "n").ok())
        .unwrap_or(0)
        > 0;
    println!("database: {}", redact_url(&settings.database.url));
    if seeded {
        println!(
            "demo data: already seeded earlier; running what is due now (re-runs create nothing new)"
        );
    } else {
        seed(&store, now).await.map_err(runtime)?;
        println!(
            "demo data: seeded {} tenants with affiliates, payment systems and ten weeks of conversions",
            TENANTS.len()
        );
    }
    let engine = Engine::new(store.clone(), EngineSettings::from_settings(settings));
    let tenants = store.tenants().await.map_err(runtime)?;
    let mut reports = Vec::new();
    for t in tenants.iter().filter(|t| (1..=7).contains(&t.id)) {
        reports.push(
            engine
                .run_due_for(t, now, &tokio_util::sync::CancellationToken::new())
                .await,
        );
    }
    print!("{}", render_text("run-due", now, &reports));
    // The misconfigured demo tenant is shown on purpose: it is not a failure of the demo.
    Ok(ExitCode::SUCCESS)
}

async fn seed(store: &Store, now: DateTime<Utc>) -> Result<(), crate::store::StoreError> {
    let codec = Codec(store.backend());
    let mut rng = Lcg(20_240_101);
    // The settings were saved 70 days ago, so every run of the 35-day window is due.
    let saved = now - Duration::days(70);
    for &(id, name, tz, schedule, currencies) in TENANTS {
        store
            .execute(
                "INSERT INTO tenants (id, name, timezone, invoice_schedule, schedule_updated_at)
                 VALUES ($1, $2, $3, $4, $5)",
                vec![
                    id.into(),
                    name.into(),
                    tz.into(),
                    schedule.into(),
                    codec.instant(saved),
                ],
            )
            .await?;
        for n in 0..7i64 {
            let affiliate = id * 100 + n + 1;
            let status = STATUSES[n as usize % STATUSES.len()];
            store
                .execute(
                    "INSERT INTO affiliates (id, tenant_id, name, status) VALUES ($1, $2, $3, $4)",
                    vec![
                        affiliate.into(),
                        id.into(),
                        format!("Affiliate {affiliate}").into(),
                        status.into(),
                    ],
                )
                .await?;
            // Every affiliate but the sixth pays out in the first currency; only even ones in
            // the second: the others show `no_payment_system`.
            for (k, currency) in currencies.iter().enumerate() {
                let has = if k == 0 { n != 5 } else { n % 2 == 0 };
                if has {
                    store
                        .execute(
                            "INSERT INTO payment_systems (affiliate_id, currency, method, is_main)
                             VALUES ($1, $2, $3, $4)",
                            vec![
                                affiliate.into(),
                                (*currency).into(),
                                if k == 0 { "paypal" } else { "wire" }.into(),
                                (k == 0).into(),
                            ],
                        )
                        .await?;
                }
            }
            // Conversions over the last ten weeks.
            for c in 0..30i64 {
                let conversion = affiliate * 1000 + c;
                let at = now - Duration::minutes(rng.next(70 * 24 * 60) as i64 + 1);
                let currency = currencies[rng.next(currencies.len() as u64) as usize];
                let status =
                    CONVERSION_STATUSES[rng.next(CONVERSION_STATUSES.len() as u64) as usize];
                let cents = rng.next(50_000) as i64 + 1;
                let payout = match currency {
                    "JPY" | "PYG" => Decimal::new(cents * 10, 0),
                    "KWD" => Decimal::new(cents, 3),
                    _ => Decimal::new(cents, 2) + Decimal::new(5, 3) * Decimal::from(c % 2),
                };
                // One affiliate in Paris had a refund that exceeds its earnings.
                let payout = if affiliate == 104 && currency == "USD" {
                    -payout
                } else {
                    payout
                };
                store
                    .execute(
                        "INSERT INTO conversions (id, tenant_id, affiliate_id, occurred_at, status, payout, currency)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        vec![
                            conversion.into(),
                            id.into(),
                            affiliate.into(),
                            codec.instant(at),
                            status.into(),
                            codec.money(payout),
                            currency.into(),
                        ],
                    )
                    .await?;
            }
        }
    }
    // A manual EUR invoice for affiliate 101 from three days before the latest weekly period
    // of Paris to three days into it, including one conversion two days into it: a partial
    // overlap, so that period's EUR invoice starts at that conversion.
    let paris: TimeZone = "Europe/Paris".parse().expect("known zone");
    let mut monday = paris.local_date(now - Duration::days(1));
    while monday.weekday() != Weekday::Mon {
        monday = monday.pred_opt().expect("date in range");
    }
    let week_start = start_of_day(paris, monday - Duration::days(7));
    let manual_start = week_start - Duration::days(3);
    let manual_end = week_start + Duration::days(3);
    let last_invoiced = week_start + Duration::days(2);
    let rows = store
        .query(
            "INSERT INTO invoices (tenant_id, affiliate_id, currency, period_start, period_end, amount,
                                   conversions_count, status, comment, source)
             VALUES (1, 101, 'EUR', $1, $2, $3, 1, 'pending', 'Manual invoice', 'manual') RETURNING id",
            vec![codec.instant(manual_start), codec.instant(manual_end), codec.money(Decimal::new(4200, 2))],
        )
        .await?;
    let invoice_id: i64 = rows
        .first()
        .and_then(|r| r.try_get("", "id").ok())
        .unwrap_or_default();
    store
        .execute(
            "INSERT INTO conversions (id, tenant_id, affiliate_id, occurred_at, status, payout, currency, invoice_id)
             VALUES (999001, 1, 101, $1, 'approved', $2, 'EUR', $3)",
            vec![
                codec.instant(last_invoiced),
                codec.money(Decimal::new(4200, 2)),
                Value::from(invoice_id),
            ],
        )
        .await?;
    Ok(())
}
