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

/// How writing a batch of invoices ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// All created, ids in the order given.
    Created(Vec<i64>),
    /// Something differed from what was counted (or an invoice exists already): rolled back
    /// whole; write them one by one to find out which.
    Retry,
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

/// The bound values of one invoice row, in the column order of both INSERTs below (with
/// `source = 'auto'` written as a literal between `comment` and `payment_system_id`).
fn invoice_values(codec: Codec, c: &InvoiceToCreate<'_>) -> [Value; 13] {
    let inv = &c.invoice;
    [
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
    ]
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
                invoice_values(codec, c).into(),
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

    /// Creates many invoices of one run in one transaction, each with exactly its links, and
    /// their `created` decisions: a multi-row INSERT, one UPDATE … FROM linking every
    /// invoice's conversions, and a per-invoice check of the linked count and rounded sum.
    pub async fn create_invoices(
        &self,
        batch: &[InvoiceToCreate<'_>],
    ) -> Result<BatchOutcome, StoreError> {
        let Some(first) = batch.first() else {
            return Ok(BatchOutcome::Created(Vec::new()));
        };
        let codec = Codec(self.backend);
        let txn = self.begin_write().await?;
        if !fence(&txn, self, first.run_id, first.node_id, first.lease).await? {
            txn.rollback().await.context("rolling back")?;
            return Ok(BatchOutcome::LostClaim);
        }
        const COLUMNS: usize = 13;
        let mut sql = String::from(
            "INSERT INTO invoices
               (tenant_id, affiliate_id, currency, period_start, period_end, amount,
                conversions_count, status, comment, source, payment_system_id, run_id,
                run_period_start_date, run_period_end_date)
             VALUES ",
        );
        let mut values: Vec<Value> = Vec::with_capacity(batch.len() * COLUMNS);
        for (i, c) in batch.iter().enumerate() {
            let n = i * COLUMNS;
            if i > 0 {
                sql.push_str(", ");
            }
            let p: Vec<String> = (1..=COLUMNS).map(|k| format!("${}", n + k)).collect();
            sql.push_str(&format!(
                "({}, {}, {}, {}, {}, {}, {}, {}, {}, 'auto', {}, {}, {}, {})",
                p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12]
            ));
            values.extend(invoice_values(codec, c));
        }
        sql.push_str(" RETURNING id, affiliate_id, currency");
        let inserted = match txn.query_all_raw(self.statement(&sql, values)).await {
            Ok(rows) => rows,
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                txn.rollback().await.context("rolling back")?;
                return Ok(BatchOutcome::Retry);
            }
            Err(e) => return Err(e).context("inserting invoices"),
        };
        let mut id_of: std::collections::HashMap<(i64, String), i64> =
            std::collections::HashMap::new();
        for r in &inserted {
            let currency: String = get(r, "currency", "invoices")?;
            id_of.insert(
                (
                    get(r, "affiliate_id", "invoices")?,
                    currency.trim().to_owned(),
                ),
                get(r, "id", "invoices")?,
            );
        }
        let ids: Vec<i64> = batch
            .iter()
            .map(|c| {
                id_of
                    .get(&(c.affiliate_id, c.invoice.currency.as_str().to_owned()))
                    .copied()
            })
            .collect::<Option<_>>()
            .ok_or(StoreError::BadData {
                table: "invoices",
                detail: "INSERT … RETURNING did not return every invoice".into(),
            })?;

        let list: Vec<String> = (1..=ids.len()).map(|k| format!("${k}")).collect();
        let link = format!(
            "UPDATE conversions SET invoice_id = i.id
               FROM invoices i
              WHERE i.id IN ({})
                AND conversions.tenant_id = i.tenant_id AND conversions.affiliate_id = i.affiliate_id
                AND conversions.currency = i.currency AND conversions.status = 'approved'
                AND conversions.invoice_id IS NULL
                AND conversions.occurred_at >= i.period_start AND conversions.occurred_at < i.period_end
          RETURNING conversions.invoice_id AS invoice_id, conversions.payout AS payout",
            list.join(", ")
        );
        let id_values: Vec<Value> = ids.iter().map(|&id| id.into()).collect();
        let mut linked: std::collections::HashMap<i64, Totals> = std::collections::HashMap::new();
        match self.backend {
            Backend::Postgres => {
                let rows = txn
                    .query_all_raw(self.statement(
                        &format!(
                            "WITH linked AS ({link})
                             SELECT invoice_id, count(*) AS n, sum(payout) AS total FROM linked GROUP BY invoice_id"
                        ),
                        id_values,
                    ))
                    .await
                    .context("linking conversions")?;
                for r in &rows {
                    linked.insert(
                        get(r, "invoice_id", "conversions")?,
                        Totals {
                            count: get::<i64>(r, "n", "conversions")? as u64,
                            sum: codec.get_money(r, "total", "conversions")?,
                        },
                    );
                }
            }
            Backend::Sqlite => {
                let rows = txn
                    .query_all_raw(self.statement(&link, id_values))
                    .await
                    .context("linking conversions")?;
                for r in &rows {
                    let payout = codec.get_money(r, "payout", "conversions")?;
                    linked
                        .entry(get(r, "invoice_id", "conversions")?)
                        .or_default()
                        .add(payout)
                        .map_err(|e| StoreError::BadData {
                            table: "conversions",
                            detail: e.to_string(),
                        })?;
                }
            }
        }
        let exact = batch.iter().zip(&ids).all(|(c, id)| {
            let got = linked.get(id).copied().unwrap_or_default();
            got.count == c.invoice.conversions_count
                && c.invoice.currency.round(got.sum) == c.invoice.amount
        });
        if !exact {
            txn.rollback().await.context("rolling back")?;
            return Ok(BatchOutcome::Retry);
        }
        let decisions: Vec<DecisionRow> = batch
            .iter()
            .zip(&ids)
            .map(|(c, &id)| DecisionRow {
                affiliate_id: c.affiliate_id,
                currency: c.invoice.currency.as_str().to_owned(),
                reason: None,
                invoice_id: Some(id),
                amount: Some(c.invoice.amount),
            })
            .collect();
        for chunk in decisions.chunks(500) {
            self.insert_decisions(&txn, first.run_id, first.tenant_id, chunk)
                .await?;
        }
        txn.commit().await.context("committing invoices")?;
        Ok(BatchOutcome::Created(ids))
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
