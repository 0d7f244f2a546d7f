//! The HTTP surface of `serve` (SPEC §9), on actix-web: health, metrics and the `/api/v1`
//! operator API. Handlers are thin: they validate, call the store or the engine, and answer
//! JSON. No request, however malformed, gets a 5xx for its shape or brings the process down.

mod api;
mod health;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use actix::Addr;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{App, HttpResponse, HttpServer, ResponseError, web};
use metrics_exporter_prometheus::PrometheusHandle;
use subtle::ConstantTimeEq;

use crate::actors::Shared;
use crate::actors::supervisor::Supervisor;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub shared: Shared,
    pub supervisor: Addr<Supervisor>,
    /// `http.admin_token`; replaced on reload.
    pub admin_token: Arc<RwLock<Option<String>>>,
    pub metrics: PrometheusHandle,
}

/// An error answered as `{"error": "<message>"}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A failure on our side (the database is down, say): 503, retry later.
    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "API request failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("temporarily unavailable: {error}"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(serde_json::json!({ "error": self.message }))
    }
}

/// Who may call `/api/*` (SPEC §9): with a token configured, every call needs
/// `Authorization: Bearer <token>` (constant-time compare); without one, reads are open and
/// every other method is refused.
fn authorize(req: &ServiceRequest, token: Option<&str>) -> Result<(), ApiError> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let Some(token) = token else {
        return if read {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "API writes are disabled: no http.admin_token is configured",
            ))
        };
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        ))
    }
}

async fn auth(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let token = req
        .app_data::<web::Data<ApiState>>()
        .and_then(|s| s.admin_token.read().ok().and_then(|t| t.clone()));
    match authorize(&req, token.as_deref()) {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(e) => Ok(req.into_response(e.error_response()).map_into_right_body()),
    }
}

async fn not_found() -> HttpResponse {
    ApiError::not_found("no such resource").error_response()
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; allowed: {allow}"),
    )
    .error_response();
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

/// Extractor errors as JSON with the statuses of §9: bodies too large 413, malformed JSON
/// 422, malformed path ids 404, malformed query strings 400.
fn configure_extractors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY)
            .content_type_required(false)
            .error_handler(|err, _| {
                let e = match &err {
                    actix_web::error::JsonPayloadError::Overflow { .. }
                    | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                        ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("request body larger than {MAX_BODY} bytes"),
                        )
                    }
                    other => ApiError::unprocessable(format!("malformed JSON body: {other}")),
                };
                e.into()
            }),
    )
    .app_data(web::PayloadConfig::default().limit(MAX_BODY))
    .app_data(
        web::PathConfig::default().error_handler(|err, _| {
            ApiError::not_found(format!("no such resource ({err})")).into()
        }),
    )
    .app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::bad_request(format!("malformed query string: {err}")).into()
    }));
}

/// Binds `listen` and serves until stopped; returns the bound address and a stop handle.
pub fn start(listen: SocketAddr, state: ApiState) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(configure_extractors)
            .configure(health::routes)
            .service(
                web::scope("/api/v1")
                    .wrap(actix_web::middleware::from_fn(auth))
                    .configure(api::routes),
            )
            .default_service(web::to(not_found))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(listen)?;
    let bound = server.addrs().first().copied().unwrap_or(listen);
    let server = server.run();
    let handle = server.handle();
    actix::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok((bound, handle))
}

/// A resource answering 405 in JSON, with `Allow: <allow>`, for methods it does not route.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move { method_not_allowed(allow) }))
}
