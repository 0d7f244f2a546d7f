//! What the HTTP API reads and writes: tenant settings, pages of runs and invoices, a run's
//! decisions.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, Value};
use serde::Serialize;

use super::codec::{Codec, get};
use super::{Context, RunRow, Store, StoreError, TenantRow};
use crate::money::Currency;

/// One decision of a run, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionRecord {
    pub id: i64,
    pub affiliate_id: i64,
    pub currency: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub invoice_id: Option<i64>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub amount: Option<Decimal>,
}

/// One invoice, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvoiceRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub affiliate_id: i64,
    pub currency: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub conversions_count: i32,
    pub status: String,
    pub comment: String,
    pub source: String,
    pub payment_system_id: Option<i64>,
    pub run_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// Which invoices to list.
#[derive(Clone, Debug, Default)]
pub struct InvoiceFilter {
    pub status: Option<String>,
    /// Invoices whose period intersects `[from, to)`.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// An amount as the currency writes it; unchanged but normalised for an invalid code.
fn present(currency: &str, amount: Decimal) -> Decimal {
    match currency.parse::<Currency>() {
        Ok(c) => c.present(amount),
        Err(_) => amount.normalize(),
    }
}

impl Store {
    /// Saves a tenant's schedule setting, stamping `schedule_updated_at`; `None` when the
    /// tenant does not exist.
    pub async fn save_settings(
        &self,
        tenant_id: i64,
        schedule: &str,
        timezone: &str,
        anchor: Option<NaiveDate>,
        now: DateTime<Utc>,
    ) -> Result<Option<TenantRow>, StoreError> {
        let codec = Codec(self.backend);
        let anchor = match anchor {
            Some(d) => codec.date(d),
            None => match self.backend {
                crate::config::Backend::Postgres => Value::ChronoDate(None),
                crate::config::Backend::Sqlite => Value::String(None),
            },
        };
        let changed = self
            .db
            .execute_raw(self.statement(
                "UPDATE tenants SET invoice_schedule = $2, timezone = $3, biweekly_anchor = $4,
                        schedule_updated_at = $5
                  WHERE id = $1",
                vec![
                    tenant_id.into(),
                    schedule.into(),
                    timezone.into(),
                    anchor,
                    codec.instant(now),
                ],
            ))
            .await
            .context("saving tenant settings")?
            .rows_affected();
        if changed == 0 {
            return Ok(None);
        }
        self.tenant(tenant_id).await
    }

    /// A page of a tenant's runs, newest first, and how many there are.
    pub async fn runs_page(
        &self,
        tenant_id: i64,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<RunRow>, u64), StoreError> {
        let rows = self
            .db
            .query_all_raw(self.statement(
                &format!(
                    "SELECT {} FROM invoice_runs WHERE tenant_id = $1
                      ORDER BY due_at DESC, id DESC LIMIT $2 OFFSET $3",
                    super::runs::RUN_COLUMNS
                ),
                vec![
                    tenant_id.into(),
                    i64::from(limit).into(),
                    (offset as i64).into(),
                ],
            ))
            .await
            .context("listing runs")?;
        let runs = rows
            .iter()
            .map(|r| self.run_row(r))
            .collect::<Result<_, _>>()?;
        let total = self
            .count(
                "SELECT count(*) AS n FROM invoice_runs WHERE tenant_id = $1",
                vec![tenant_id.into()],
            )
            .await?;
        Ok((runs, total))
    }

    /// Every decision of a run.
    pub async fn decisions_of_run(&self, run_id: i64) -> Result<Vec<DecisionRecord>, StoreError> {
        let codec = Codec(self.backend);
        let rows = self
            .db
            .query_all_raw(self.statement(
                "SELECT id, affiliate_id, currency, outcome, reason, invoice_id, amount
                   FROM invoice_decisions WHERE run_id = $1 ORDER BY affiliate_id, currency, id",
                vec![run_id.into()],
            ))
            .await
            .context("listing decisions")?;
        rows.iter()
            .map(|r| {
                let currency = get::<String>(r, "currency", "invoice_decisions")?
                    .trim()
                    .to_owned();
                let amount = codec.get_opt_money(r, "amount", "invoice_decisions")?;
                Ok(DecisionRecord {
                    id: get(r, "id", "invoice_decisions")?,
                    affiliate_id: get(r, "affiliate_id", "invoice_decisions")?,
                    amount: amount.map(|a| present(&currency, a)),
                    currency,
                    outcome: get(r, "outcome", "invoice_decisions")?,
                    reason: get(r, "reason", "invoice_decisions")?,
                    invoice_id: get(r, "invoice_id", "invoice_decisions")?,
                })
            })
            .collect()
    }

    /// A page of a tenant's invoices, newest first, and how many match.
    pub async fn invoices_page(
        &self,
        tenant_id: i64,
        filter: &InvoiceFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<InvoiceRecord>, u64), StoreError> {
        let codec = Codec(self.backend);
        let mut clause = String::from("tenant_id = $1");
        let mut values: Vec<Value> = vec![tenant_id.into()];
        if let Some(status) = &filter.status {
            values.push(status.as_str().into());
            clause.push_str(&format!(" AND status = ${}", values.len()));
        }
        if let Some(from) = filter.from {
            values.push(codec.instant(from));
            clause.push_str(&format!(" AND period_end > ${}", values.len()));
        }
        if let Some(to) = filter.to {
            values.push(codec.instant(to));
            clause.push_str(&format!(" AND period_start < ${}", values.len()));
        }
        let total = self
            .count(
                &format!("SELECT count(*) AS n FROM invoices WHERE {clause}"),
                values.clone(),
            )
            .await?;
        let n = values.len();
        values.push(i64::from(limit).into());
        values.push((offset as i64).into());
        let rows = self
            .db
            .query_all_raw(self.statement(
                &format!(
                    "SELECT id, tenant_id, affiliate_id, currency, period_start, period_end, amount,
                            conversions_count, status, comment, source, payment_system_id, run_id,
                            created_at
                       FROM invoices WHERE {clause}
                      ORDER BY id DESC LIMIT ${} OFFSET ${}",
                    n + 1,
                    n + 2
                ),
                values,
            ))
            .await
            .context("listing invoices")?;
        let invoices = rows
            .iter()
            .map(|r| {
                let currency = get::<String>(r, "currency", "invoices")?.trim().to_owned();
                let amount = present(&currency, codec.get_money(r, "amount", "invoices")?);
                Ok(InvoiceRecord {
                    id: get(r, "id", "invoices")?,
                    tenant_id: get(r, "tenant_id", "invoices")?,
                    affiliate_id: get(r, "affiliate_id", "invoices")?,
                    currency,
                    period_start: codec.get_instant(r, "period_start", "invoices")?,
                    period_end: codec.get_instant(r, "period_end", "invoices")?,
                    amount,
                    conversions_count: get(r, "conversions_count", "invoices")?,
                    status: get(r, "status", "invoices")?,
                    comment: get(r, "comment", "invoices")?,
                    source: get(r, "source", "invoices")?,
                    payment_system_id: get(r, "payment_system_id", "invoices")?,
                    run_id: get(r, "run_id", "invoices")?,
                    created_at: codec.get_instant(r, "created_at", "invoices")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((invoices, total))
    }

    /// Answers when the database does: the readiness probe.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .execute_unprepared("SELECT 1")
            .await
            .context("pinging the database")?;
        Ok(())
    }

    async fn count(&self, sql: &str, values: Vec<Value>) -> Result<u64, StoreError> {
        let row = self
            .db
            .query_one_raw(self.statement(sql, values))
            .await
            .context("counting rows")?;
        let n: i64 = match row {
            Some(r) => get(&r, "n", "count")?,
            None => 0,
        };
        Ok(n as u64)
    }
}
