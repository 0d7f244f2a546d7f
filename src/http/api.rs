//! `/api/v1`: tenants and their schedule settings, runs and their decisions, invoices, and
//! the preview (dry run).

use actix_web::{HttpResponse, web};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, resource};
use crate::actors::supervisor::Upsert;
use crate::schedule::{Anchor, PlannedRun, Schedule, TimeZone};
use crate::store::{InvoiceFilter, RunRow, TenantRow};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/tenants", "GET").route(web::get().to(list_tenants)))
        .service(
            resource("/tenants/{id}/settings", "GET, PUT")
                .route(web::get().to(get_settings))
                .route(web::put().to(put_settings)),
        )
        .service(resource("/tenants/{id}/runs", "GET").route(web::get().to(list_runs)))
        .service(resource("/tenants/{id}/invoices", "GET").route(web::get().to(list_invoices)))
        .service(resource("/tenants/{id}/preview", "POST").route(web::post().to(preview)))
        .service(resource("/runs/{id}", "GET").route(web::get().to(get_run)));
}

/// `?limit=&offset=`: at most 500 items a page, 50 by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<u32>,
    offset: Option<u64>,
}

impl Page {
    /// Refuses a limit outside 1..=500 rather than silently changing it.
    fn check(&self) -> Result<(), ApiError> {
        if matches!(self.limit, Some(0) | Some(501..)) {
            return Err(ApiError::bad_request("limit must be between 1 and 500"));
        }
        if self.offset() > i64::MAX as u64 {
            return Err(ApiError::bad_request("offset is too large"));
        }
        Ok(())
    }
    fn limit(&self) -> u32 {
        self.limit.unwrap_or(50)
    }
    fn offset(&self) -> u64 {
        self.offset.unwrap_or(0)
    }
}

#[derive(Serialize)]
struct Paged<T> {
    items: Vec<T>,
    total: u64,
    limit: u32,
    offset: u64,
}

/// The next run of a tenant: its instant and its period, as instants and local dates.
#[derive(Serialize)]
struct NextRun {
    at: DateTime<Utc>,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    period_start_date: NaiveDate,
    period_end_date: NaiveDate,
}

impl From<PlannedRun> for NextRun {
    fn from(run: PlannedRun) -> Self {
        Self {
            at: run.instant,
            period_start: run.period.start,
            period_end: run.period.end,
            period_start_date: run.key.start_date,
            period_end_date: run.key.end_date,
        }
    }
}

/// A tenant's schedule setting, as the API shows it.
#[derive(Serialize)]
struct SettingsView {
    tenant_id: i64,
    name: String,
    schedule: String,
    timezone: String,
    biweekly_anchor: Option<String>,
    schedule_updated_at: Option<DateTime<Utc>>,
    /// Why the stored setting cannot be scheduled, if it cannot.
    misconfigured: Option<String>,
    next_run: Option<NextRun>,
}

fn settings_view(state: &ApiState, row: TenantRow) -> SettingsView {
    let engine = state.shared.engine();
    let now = state.shared.clock.now();
    let (misconfigured, next_run) = match row.schedule() {
        Ok(schedule) => (
            None,
            schedule
                .next_run(&engine.settings().schedule, now)
                .map(NextRun::from),
        ),
        Err(e) => (Some(e.reason), None),
    };
    SettingsView {
        tenant_id: row.id,
        name: row.name,
        schedule: row.invoice_schedule,
        timezone: row.timezone,
        biweekly_anchor: row.biweekly_anchor,
        schedule_updated_at: row.schedule_updated_at.ok(),
        misconfigured,
        next_run,
    }
}

async fn tenant(state: &ApiState, id: i64) -> Result<TenantRow, ApiError> {
    state
        .shared
        .engine()
        .store()
        .tenant(id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("unknown tenant {id}")))
}

async fn list_tenants(
    state: web::Data<ApiState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    page.check()?;
    let rows = state
        .shared
        .engine()
        .store()
        .tenants()
        .await
        .map_err(ApiError::unavailable)?;
    let total = rows.len() as u64;
    let items: Vec<SettingsView> = rows
        .into_iter()
        .skip(usize::try_from(page.offset()).unwrap_or(usize::MAX))
        .take(page.limit() as usize)
        .map(|row| settings_view(&state, row))
        .collect();
    Ok(HttpResponse::Ok().json(Paged {
        items,
        total,
        limit: page.limit(),
        offset: page.offset(),
    }))
}

async fn get_settings(
    state: web::Data<ApiState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let row = tenant(&state, *id).await?;
    Ok(HttpResponse::Ok().json(settings_view(&state, row)))
}

/// The body of `PUT …/settings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    schedule: String,
    timezone: String,
    #[serde(default)]
    biweekly_anchor: Option<String>,
}

async fn put_settings(
    state: web::Data<ApiState>,
    id: web::Path<i64>,
    body: web::Json<SettingsBody>,
) -> Result<HttpResponse, ApiError> {
    let id = *id;
    let schedule: Schedule = body
        .schedule
        .parse()
        .map_err(|e: crate::schedule::ScheduleError| ApiError::unprocessable(e.to_string()))?;
    let zone: TimeZone = body
        .timezone
        .parse()
        .map_err(|e: crate::schedule::ScheduleError| ApiError::unprocessable(e.to_string()))?;
    let anchor = match body.biweekly_anchor.as_deref() {
        None => None,
        Some(text) => {
            let date = text.parse::<NaiveDate>().map_err(|_| {
                ApiError::unprocessable(format!(
                    "biweekly_anchor {text:?} is not a date (expected YYYY-MM-DD)"
                ))
            })?;
            Some(
                Anchor::new(date)
                    .map_err(|e| ApiError::unprocessable(e.to_string()))?
                    .date(),
            )
        }
    };
    let now = state.shared.clock.now();
    let row = state
        .shared
        .engine()
        .store()
        .save_settings(id, schedule.as_str(), zone.name(), anchor, now)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("unknown tenant {id}")))?;
    tracing::info!(tenant_id = id, schedule = %schedule, zone = %zone, "settings saved through the API");
    // Re-arm at once on this node (if it owns the tenant); other nodes see it at refresh.
    state.supervisor.do_send(Upsert(row.clone()));
    Ok(HttpResponse::Ok().json(settings_view(&state, row)))
}

/// A run as the API shows it.
#[derive(Serialize)]
struct RunView {
    id: i64,
    tenant_id: i64,
    schedule: String,
    period_start_date: NaiveDate,
    period_end_date: NaiveDate,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    due_at: DateTime<Utc>,
    status: crate::store::RunStatus,
    attempts: i32,
    claimed_by: Option<String>,
    invoices_created: i32,
    error: Option<String>,
}

impl From<RunRow> for RunView {
    fn from(r: RunRow) -> Self {
        Self {
            id: r.id,
            tenant_id: r.tenant_id,
            schedule: r.schedule,
            period_start_date: r.key.start_date,
            period_end_date: r.key.end_date,
            period_start: r.period.start,
            period_end: r.period.end,
            due_at: r.due_at,
            status: r.status,
            attempts: r.attempts,
            claimed_by: r.claimed_by,
            invoices_created: r.invoices_created,
            error: r.error,
        }
    }
}

async fn list_runs(
    state: web::Data<ApiState>,
    id: web::Path<i64>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    page.check()?;
    let row = tenant(&state, *id).await?;
    let (runs, total) = state
        .shared
        .engine()
        .store()
        .runs_page(row.id, page.limit(), page.offset())
        .await
        .map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok().json(Paged {
        items: runs.into_iter().map(RunView::from).collect(),
        total,
        limit: page.limit(),
        offset: page.offset(),
    }))
}

async fn get_run(state: web::Data<ApiState>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let store = state.shared.engine().store().clone();
    let run = store
        .run(*id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("unknown run {id}")))?;
    let decisions = store
        .decisions_of_run(run.id)
        .await
        .map_err(ApiError::unavailable)?;
    let mut body = serde_json::to_value(RunView::from(run)).map_err(ApiError::unavailable)?;
    body["decisions"] = serde_json::to_value(decisions).map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok().json(body))
}

/// `?status=&from=&to=&limit=&offset=` for invoices.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvoiceQuery {
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

fn instant(name: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|d| d.to_utc())
            .map_err(|e| {
                ApiError::bad_request(format!("{name}: {t:?} is not an RFC 3339 instant ({e})"))
            })
    })
    .transpose()
}

async fn list_invoices(
    state: web::Data<ApiState>,
    id: web::Path<i64>,
    query: web::Query<InvoiceQuery>,
) -> Result<HttpResponse, ApiError> {
    let row = tenant(&state, *id).await?;
    let page = Page {
        limit: query.limit,
        offset: query.offset,
    };
    page.check()?;
    let filter = InvoiceFilter {
        status: query.status.clone(),
        from: instant("from", query.from.as_deref())?,
        to: instant("to", query.to.as_deref())?,
    };
    let (invoices, total) = state
        .shared
        .engine()
        .store()
        .invoices_page(row.id, &filter, page.limit(), page.offset())
        .await
        .map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok().json(Paged {
        items: invoices,
        total,
        limit: page.limit(),
        offset: page.offset(),
    }))
}

/// The body of `POST …/preview`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    at: String,
}

async fn preview(
    state: web::Data<ApiState>,
    id: web::Path<i64>,
    body: web::Json<PreviewBody>,
) -> Result<HttpResponse, ApiError> {
    let at = DateTime::parse_from_rfc3339(&body.at)
        .map(|d| d.to_utc())
        .map_err(|e| {
            ApiError::unprocessable(format!(
                "at: {:?} is not an RFC 3339 instant ({e})",
                body.at
            ))
        })?;
    let row = tenant(&state, *id).await?;
    let report = state.shared.engine().preview(&row, at).await;
    Ok(HttpResponse::Ok().json(report))
}
