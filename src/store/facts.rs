//! What the rules read for one run, loaded in a few set-based queries per tenant (or, when
//! an affiliate is re-evaluated, for that affiliate alone).

use std::collections::HashMap;

use futures_util::TryStreamExt;
use sea_orm::{ConnectionTrait, StreamTrait, Value};

use super::codec::{Codec, get};
use super::{Context, Store, StoreError};
use crate::config::Backend;
use crate::money::{Currency, Totals};
use crate::rules::{ExistingInvoice, PaymentSystem, Run};
use crate::schedule::{Period, RunKey};

/// An affiliate and its stored status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffiliateRow {
    pub id: i64,
    pub status: String,
}

/// Payable conversions of one affiliate in one currency code, totalled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayableTotal {
    pub affiliate_id: i64,
    /// The code as stored; it may not be a valid currency.
    pub currency: String,
    /// `Err` names a payout that could not be read exactly (SQLite text).
    pub totals: Result<Totals, String>,
}

/// `AND <column> = $n` when restricted to one affiliate.
fn only(column: &str, affiliate: Option<i64>, n: usize, values: &mut Vec<Value>) -> String {
    match affiliate {
        Some(id) => {
            values.push(id.into());
            format!(" AND {column} = ${n}")
        }
        None => String::new(),
    }
}

impl Store {
    /// The tenant's affiliates (or one of them).
    pub async fn affiliates(
        &self,
        tenant_id: i64,
        affiliate: Option<i64>,
    ) -> Result<Vec<AffiliateRow>, StoreError> {
        let mut values = vec![tenant_id.into()];
        let filter = only("id", affiliate, 2, &mut values);
        let rows = self
            .db
            .query_all_raw(self.statement(
                &format!("SELECT id, status FROM affiliates WHERE tenant_id = $1{filter}"),
                values,
            ))
            .await
            .context("loading affiliates")?;
        rows.iter()
            .map(|r| {
                Ok(AffiliateRow {
                    id: get(r, "id", "affiliates")?,
                    status: get(r, "status", "affiliates")?,
                })
            })
            .collect()
    }

    /// Payment systems of the tenant's affiliates, by affiliate. Rows whose currency is not a
    /// valid code can match no conversion and are left out.
    pub async fn payment_systems(
        &self,
        tenant_id: i64,
        affiliate: Option<i64>,
    ) -> Result<HashMap<i64, Vec<PaymentSystem>>, StoreError> {
        let mut values = vec![tenant_id.into()];
        let filter = only("a.id", affiliate, 2, &mut values);
        let rows = self
            .db
            .query_all_raw(self.statement(
                &format!(
                    "SELECT ps.id, ps.affiliate_id, ps.currency, ps.is_main
                       FROM payment_systems ps JOIN affiliates a ON a.id = ps.affiliate_id
                      WHERE a.tenant_id = $1{filter}"
                ),
                values,
            ))
            .await
            .context("loading payment systems")?;
        let mut by_affiliate: HashMap<i64, Vec<PaymentSystem>> = HashMap::new();
        for r in &rows {
            let code: String = get(r, "currency", "payment_systems")?;
            let Ok(currency) = code.trim().parse::<Currency>() else {
                tracing::warn!(currency = %code, "payment system with an invalid currency code ignored");
                continue;
            };
            by_affiliate
                .entry(get(r, "affiliate_id", "payment_systems")?)
                .or_default()
                .push(PaymentSystem {
                    id: get(r, "id", "payment_systems")?,
                    currency,
                    is_main: get(r, "is_main", "payment_systems")?,
                });
        }
        Ok(by_affiliate)
    }

    /// Invoices of the tenant's affiliates that intersect the run's period or carry its run
    /// key, each with the instant of its last linked conversion.
    pub async fn existing_invoices(
        &self,
        tenant_id: i64,
        run: &Run,
        affiliate: Option<i64>,
    ) -> Result<HashMap<i64, Vec<ExistingInvoice>>, StoreError> {
        let codec = Codec(self.backend);
        let mut values = vec![
            tenant_id.into(),
            codec.instant(run.period.start),
            codec.instant(run.period.end),
            codec.date(run.key.start_date),
            codec.date(run.key.end_date),
        ];
        let filter = only("i.affiliate_id", affiliate, 6, &mut values);
        let rows = self
            .db
            .query_all_raw(self.statement(
                &format!(
                    "SELECT i.id, i.affiliate_id, i.currency, i.status, i.source,
                            CAST(i.run_period_start_date AS TEXT) AS run_start,
                            CAST(i.run_period_end_date AS TEXT) AS run_end,
                            i.period_start, i.period_end,
                            (SELECT max(c.occurred_at) FROM conversions c WHERE c.invoice_id = i.id)
                              AS last_linked_at
                       FROM invoices i
                      WHERE i.tenant_id = $1{filter}
                        AND ((i.period_end > $2 AND i.period_start < $3)
                          OR (i.source = 'auto' AND i.run_period_start_date = $4
                              AND i.run_period_end_date = $5))"
                ),
                values,
            ))
            .await
            .context("loading existing invoices")?;
        let mut by_affiliate: HashMap<i64, Vec<ExistingInvoice>> = HashMap::new();
        for r in &rows {
            let id: i64 = get(r, "id", "invoices")?;
            let code: String = get(r, "currency", "invoices")?;
            let Ok(currency) = code.trim().parse::<Currency>() else {
                tracing::warn!(invoice_id = id, currency = %code, "invoice with an invalid currency code ignored");
                continue;
            };
            let status: String = get(r, "status", "invoices")?;
            let source: String = get(r, "source", "invoices")?;
            let run_start: Option<String> = get(r, "run_start", "invoices")?;
            let run_end: Option<String> = get(r, "run_end", "invoices")?;
            let run_key = match (run_start, run_end) {
                (Some(s), Some(e)) => match (s.parse(), e.parse()) {
                    (Ok(start_date), Ok(end_date)) => Some(RunKey {
                        start_date,
                        end_date,
                    }),
                    _ => None,
                },
                _ => None,
            };
            by_affiliate
                .entry(get(r, "affiliate_id", "invoices")?)
                .or_default()
                .push(ExistingInvoice {
                    id,
                    currency,
                    declined: status == "declined",
                    auto: source == "auto",
                    run_key,
                    period_start: codec.get_instant(r, "period_start", "invoices")?,
                    period_end: codec.get_instant(r, "period_end", "invoices")?,
                    last_linked_at: codec.get_opt_instant(r, "last_linked_at", "conversions")?,
                });
        }
        Ok(by_affiliate)
    }

    /// Payable conversions (approved, unlinked) of the tenant with `from <= occurred_at < to`
    /// whose affiliate belongs to the tenant, totalled per affiliate and currency code.
    /// Restricted to one affiliate and currency when `only` is given.
    pub async fn payable_totals(
        &self,
        tenant_id: i64,
        range: Period,
        only: Option<(i64, Currency)>,
    ) -> Result<Vec<PayableTotal>, StoreError> {
        let codec = Codec(self.backend);
        let mut values = vec![
            tenant_id.into(),
            codec.instant(range.start),
            codec.instant(range.end),
        ];
        let filter = match only {
            Some((affiliate, currency)) => {
                values.push(affiliate.into());
                values.push(currency.as_str().into());
                " AND c.affiliate_id = $4 AND c.currency = $5"
            }
            None => "",
        };
        let from_where = format!(
            "FROM conversions c
               JOIN affiliates a ON a.id = c.affiliate_id AND a.tenant_id = c.tenant_id
              WHERE c.tenant_id = $1 AND c.status = 'approved' AND c.invoice_id IS NULL
                AND c.occurred_at >= $2 AND c.occurred_at < $3{filter}"
        );
        match self.backend {
            Backend::Postgres => {
                let rows = self
                    .db
                    .query_all_raw(self.statement(
                        &format!(
                            "SELECT c.affiliate_id, c.currency, count(*) AS n, sum(c.payout) AS total
                             {from_where} GROUP BY c.affiliate_id, c.currency"
                        ),
                        values,
                    ))
                    .await
                    .context("totalling payable conversions")?;
                rows.iter()
                    .map(|r| {
                        let count: i64 = get(r, "n", "conversions")?;
                        Ok(PayableTotal {
                            affiliate_id: get(r, "affiliate_id", "conversions")?,
                            currency: get::<String>(r, "currency", "conversions")?
                                .trim()
                                .to_owned(),
                            totals: Ok(Totals {
                                count: count as u64,
                                sum: codec.get_money(r, "total", "conversions")?,
                            }),
                        })
                    })
                    .collect()
            }
            Backend::Sqlite => {
                // SQLite has no exact SUM over decimal text: stream the rows and add them up
                // exactly, keeping one running total per (affiliate, currency).
                let stream_stmt = self.statement(
                    &format!("SELECT c.id, c.affiliate_id, c.currency, c.payout {from_where}"),
                    values,
                );
                let mut stream = self
                    .db
                    .stream_raw(stream_stmt)
                    .await
                    .context("totalling payable conversions")?;
                let mut groups: HashMap<(i64, String), Result<Totals, String>> = HashMap::new();
                while let Some(r) = stream
                    .try_next()
                    .await
                    .context("totalling payable conversions")?
                {
                    let affiliate_id: i64 = get(&r, "affiliate_id", "conversions")?;
                    let currency: String = get(&r, "currency", "conversions")?;
                    let payout = codec.get_money(&r, "payout", "conversions");
                    let entry = groups
                        .entry((affiliate_id, currency))
                        .or_insert_with(|| Ok(Totals::default()));
                    if let Ok(totals) = entry {
                        let added = match payout {
                            Ok(p) => totals.add(p).map_err(|e| e.to_string()),
                            Err(e) => {
                                let id: i64 = get(&r, "id", "conversions")?;
                                Err(format!("conversion {id}: {e}"))
                            }
                        };
                        if let Err(e) = added {
                            *entry = Err(e);
                        }
                    }
                }
                Ok(groups
                    .into_iter()
                    .map(|((affiliate_id, currency), totals)| PayableTotal {
                        affiliate_id,
                        currency: currency.trim().to_owned(),
                        totals,
                    })
                    .collect())
            }
        }
    }

    /// Payable conversions of the tenant in the period whose affiliate is missing or belongs
    /// to another tenant: never invoiced, counted as bad data.
    pub async fn mismatched_conversions(
        &self,
        tenant_id: i64,
        period: Period,
    ) -> Result<u64, StoreError> {
        let codec = Codec(self.backend);
        let row = self
            .db
            .query_one_raw(self.statement(
                "SELECT count(*) AS n
                   FROM conversions c LEFT JOIN affiliates a ON a.id = c.affiliate_id
                  WHERE c.tenant_id = $1 AND c.status = 'approved' AND c.invoice_id IS NULL
                    AND c.occurred_at >= $2 AND c.occurred_at < $3
                    AND (a.id IS NULL OR a.tenant_id <> c.tenant_id)",
                vec![
                    tenant_id.into(),
                    codec.instant(period.start),
                    codec.instant(period.end),
                ],
            ))
            .await
            .context("counting conversions whose affiliate is not the tenant's")?;
        let n: i64 = match row {
            Some(r) => get(&r, "n", "conversions")?,
            None => 0,
        };
        Ok(n as u64)
    }
}
