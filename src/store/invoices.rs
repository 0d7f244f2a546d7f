//! Writing a run's results: each invoice with its conversion links in one transaction, and
//! the run's decisions.

use std::time::Duration;

use rust_decimal::Decimal;
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseTransaction, SqlErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait, Value,
};

use super::codec::{Codec, get};
use super::runs::fence;
use super::{Context, Store, StoreError};
use crate::config::Backend;
use crate::money::Totals;
use crate::rules::NewInvoice;
use crate::schedule::RunKey;

/// Everything needed to write one invoice of a run.
#[derive(Clone, Debug)]
pub struct InvoiceToCreate<'a> {
    pub run_id: i64,
    pub node_id: &'a str,
    pub lease: Duration,
    pub tenant_id: i64,
    pub affiliate_id: i64,
    pub run_key: RunKey,
    pub invoice: NewInvoice,
    pub status: &'a str,
    pub comment: &'a str,
}

/// How writing one invoice ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    Created {
        invoice_id: i64,
    },
    /// The unique index on auto invoices refused it: someone created it meanwhile.
    AlreadyInvoiced,
    /// The conversions that could be linked are not the ones counted (someone linked or
    /// added some meanwhile): rolled back, re-evaluate the affiliate.
    Mismatch {
        linked: u64,
        sum: Decimal,
    },
    /// This node no longer holds the run's claim: rolled back, stop the run.
    LostClaim,
}

/// One decision row of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionRow {
    pub affiliate_id: i64,
    pub currency: String,
    /// `None` for a creation.
    pub reason: Option<&'static str>,
    pub invoice_id: Option<i64>,
    pub amount: Option<Decimal>,
}

impl Store {
    async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        // SQLite: take the write lock at BEGIN, so two writers queue on busy_timeout instead
        // of failing when a read transaction tries to upgrade.
        let options = TransactionOptions {
            isolation_level: None,
            access_mode: match self.backend {
                Backend::Postgres => Some(AccessMode::ReadWrite),
                Backend::Sqlite => None,
            },
            sqlite_transaction_mode: match self.backend {
                Backend::Sqlite => Some(SqliteTransactionMode::Immediate),
                Backend::Postgres => None,
            },
        };
        self.db
            .begin_with_options(options)
            .await
            .context("starting a transaction")
    }

    /// Creates one invoice and links exactly its conversions, in one transaction, under the
    /// run's claim; records its `created` decision in the same transaction.
    pub async fn create_invoice(
        &self,
        c: &InvoiceToCreate<'_>,
    ) -> Result<CreateOutcome, StoreError> {
        let codec = Codec(self.backend);
        let txn = self.begin_write().await?;
        if !fence(&txn, self, c.run_id, c.node_id, c.lease).await? {
            txn.rollback().await.context("rolling back")?;
            return Ok(CreateOutcome::LostClaim);
        }
        let inv = &c.invoice;
        let inserted = txn
            .query_one_raw(self.statement(
                "INSERT INTO invoices
                   (tenant_id, affiliate_id, currency, period_start, period_end, amount,
                    conversions_count, status, comment, source, payment_system_id, run_id,
                    run_period_start_date, run_period_end_date)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'auto', $10, $11, $12, $13)
                 RETURNING id",
                vec![
                    c.tenant_id.into(),
                    c.affiliate_id.into(),
                    inv.currency.as_str().into(),
                    codec.instant(inv.from),
                    codec.instant(inv.to),
                    codec.money(inv.amount),
                    (inv.conversions_count as i64).into(),
                    c.status.into(),
                    c.comment.into(),
                    inv.payment_system_id.into(),
                    c.run_id.into(),
                    codec.date(c.run_key.start_date),
                    codec.date(c.run_key.end_date),
                ],
            ))
            .await;
        let invoice_id: i64 = match inserted {
            Ok(Some(row)) => get(&row, "id", "invoices")?,
            Ok(None) => {
                return Err(StoreError::BadData {
                    table: "invoices",
                    detail: "INSERT … RETURNING id returned no row".into(),
                });
            }
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                txn.rollback().await.context("rolling back")?;
                return Ok(CreateOutcome::AlreadyInvoiced);
            }
            Err(e) => return Err(e).context("inserting an invoice"),
        };

        let link_values: Vec<Value> = vec![
            invoice_id.into(),
            c.tenant_id.into(),
            c.affiliate_id.into(),
            inv.currency.as_str().into(),
            codec.instant(inv.from),
            codec.instant(inv.to),
        ];
        let update = "UPDATE conversions SET invoice_id = $1
                       WHERE tenant_id = $2 AND affiliate_id = $3 AND currency = $4
                         AND status = 'approved' AND invoice_id IS NULL
                         AND occurred_at >= $5 AND occurred_at < $6
                   RETURNING payout";
        let linked = match self.backend {
            Backend::Postgres => {
                let row = txn
                    .query_one_raw(self.statement(
                        &format!(
                            "WITH linked AS ({update})
                             SELECT count(*) AS n, coalesce(sum(payout), 0) AS total FROM linked"
                        ),
                        link_values,
                    ))
                    .await
                    .context("linking conversions")?;
                match row {
                    Some(r) => Totals {
                        count: get::<i64>(&r, "n", "conversions")? as u64,
                        sum: codec.get_money(&r, "total", "conversions")?,
                    },
                    None => Totals::default(),
                }
            }
            Backend::Sqlite => {
                let rows = txn
                    .query_all_raw(self.statement(update, link_values))
                    .await
                    .context("linking conversions")?;
                let mut totals = Totals::default();
                for r in &rows {
                    let payout = codec.get_money(r, "payout", "conversions")?;
                    totals.add(payout).map_err(|e| StoreError::BadData {
                        table: "conversions",
                        detail: e.to_string(),
                    })?;
                }
                totals
            }
        };
        if linked.count != inv.conversions_count || inv.currency.round(linked.sum) != inv.amount {
            txn.rollback().await.context("rolling back")?;
            return Ok(CreateOutcome::Mismatch {
                linked: linked.count,
                sum: linked.sum,
            });
        }
        self.insert_decisions(
            &txn,
            c.run_id,
            c.tenant_id,
            &[DecisionRow {
                affiliate_id: c.affiliate_id,
                currency: inv.currency.as_str().to_owned(),
                reason: None,
                invoice_id: Some(invoice_id),
                amount: Some(inv.amount),
            }],
        )
        .await?;
        txn.commit().await.context("committing an invoice")?;
        Ok(CreateOutcome::Created { invoice_id })
    }

    /// Records skip decisions of a run, replacing those of an earlier attempt of the same
    /// run (creations stay: they are facts).
    pub async fn record_skips(
        &self,
        run_id: i64,
        tenant_id: i64,
        rows: &[DecisionRow],
    ) -> Result<(), StoreError> {
        let txn = self.begin_write().await?;
        txn.execute_raw(self.statement(
            "DELETE FROM invoice_decisions WHERE run_id = $1 AND outcome = 'skipped'",
            vec![run_id.into()],
        ))
        .await
        .context("clearing an earlier attempt's decisions")?;
        for chunk in rows.chunks(500) {
            self.insert_decisions(&txn, run_id, tenant_id, chunk)
                .await?;
        }
        txn.commit().await.context("committing decisions")
    }

    async fn insert_decisions(
        &self,
        conn: &impl ConnectionTrait,
        run_id: i64,
        tenant_id: i64,
        rows: &[DecisionRow],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let codec = Codec(self.backend);
        let mut sql = String::from(
            "INSERT INTO invoice_decisions
               (run_id, tenant_id, affiliate_id, currency, outcome, reason, invoice_id, amount)
             VALUES ",
        );
        let mut values: Vec<Value> = Vec::with_capacity(rows.len() * 8);
        for (i, row) in rows.iter().enumerate() {
            let n = i * 8;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7,
                n + 8
            ));
            values.extend([
                run_id.into(),
                tenant_id.into(),
                row.affiliate_id.into(),
                row.currency.as_str().into(),
                if row.reason.is_some() {
                    "skipped"
                } else {
                    "created"
                }
                .into(),
                row.reason.map(str::to_owned).into(),
                row.invoice_id.into(),
                codec.opt_money(row.amount),
            ]);
        }
        conn.execute_raw(self.statement(&sql, values))
            .await
            .context("recording decisions")?;
        Ok(())
    }
}
