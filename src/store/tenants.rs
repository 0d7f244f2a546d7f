//! Tenants and their schedule settings.

use chrono::{DateTime, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, QueryResult};

use super::codec::{Codec, get};
use super::{Context, Store, StoreError};
use crate::schedule::{Anchor, ScheduleError, TenantSchedule};

/// A tenant row as stored; [`TenantRow::schedule`] parses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRow {
    pub id: i64,
    pub name: String,
    pub timezone: String,
    pub invoice_schedule: String,
    pub biweekly_anchor: Option<String>,
    /// `Err` holds text SQLite could not read as an instant.
    pub schedule_updated_at: Result<DateTime<Utc>, String>,
}

/// Why a tenant's stored setting cannot be scheduled: the tenant is misconfigured (§5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant_id} is misconfigured: {reason}")]
pub struct Misconfigured {
    pub tenant_id: i64,
    pub reason: String,
}

impl TenantRow {
    /// The tenant's schedule, or what is wrong with it.
    pub fn schedule(&self) -> Result<TenantSchedule, Misconfigured> {
        let wrong = |reason: String| Misconfigured {
            tenant_id: self.id,
            reason,
        };
        let from_schedule = |e: ScheduleError| wrong(e.to_string());
        let schedule = self.invoice_schedule.parse().map_err(from_schedule)?;
        let zone = self.timezone.parse().map_err(from_schedule)?;
        let anchor = match &self.biweekly_anchor {
            None => None,
            Some(text) => {
                let date = text
                    .parse::<NaiveDate>()
                    .map_err(|_| wrong(format!("biweekly_anchor {text:?} is not a date")))?;
                Some(Anchor::new(date).map_err(from_schedule)?)
            }
        };
        let updated_at = self
            .schedule_updated_at
            .clone()
            .map_err(|text| wrong(format!("schedule_updated_at {text:?} is not an instant")))?;
        Ok(TenantSchedule {
            schedule,
            zone,
            anchor,
            updated_at,
        })
    }
}

const SELECT: &str = "SELECT id, name, timezone, invoice_schedule,
        CAST(biweekly_anchor AS TEXT) AS biweekly_anchor, schedule_updated_at
   FROM tenants";

impl Store {
    /// Every tenant, by id.
    pub async fn tenants(&self) -> Result<Vec<TenantRow>, StoreError> {
        let rows = self
            .db
            .query_all_raw(self.statement(&format!("{SELECT} ORDER BY id"), vec![]))
            .await
            .context("loading tenants")?;
        rows.iter().map(|r| self.tenant_row(r)).collect()
    }

    /// One tenant, if it exists.
    pub async fn tenant(&self, id: i64) -> Result<Option<TenantRow>, StoreError> {
        let row = self
            .db
            .query_one_raw(self.statement(&format!("{SELECT} WHERE id = $1"), vec![id.into()]))
            .await
            .context("loading a tenant")?;
        row.map(|r| self.tenant_row(&r)).transpose()
    }

    fn tenant_row(&self, row: &QueryResult) -> Result<TenantRow, StoreError> {
        let codec = Codec(self.backend);
        let schedule_updated_at = match codec.get_instant(row, "schedule_updated_at", "tenants") {
            Ok(t) => Ok(t),
            Err(StoreError::BadData { detail, .. }) => Err(detail),
            Err(e) => return Err(e),
        };
        Ok(TenantRow {
            id: get(row, "id", "tenants")?,
            name: get(row, "name", "tenants")?,
            timezone: get(row, "timezone", "tenants")?,
            invoice_schedule: get(row, "invoice_schedule", "tenants")?,
            biweekly_anchor: get(row, "biweekly_anchor", "tenants")?,
            schedule_updated_at,
        })
    }
}
