//! The CLI's commands (SPEC §8), each a function from parsed arguments to an exit status.
//! Every error ends as one line on stderr: usage and configuration errors exit 2, runtime
//! failures exit 1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::config::{LogFormat, Settings, Source};
use crate::engine::{Engine, EngineSettings, RunOutcome, TenantReport};
use crate::store::Store;

/// A command's failure, with the exit status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or configuration: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Something failed while running: exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            Self::Runtime(_) => ExitCode::from(1),
        }
    }
}

/// Parses an RFC 3339 instant given on the command line, naming the option on failure.
pub fn parse_instant(option: &str, text: &str) -> Result<DateTime<Utc>, CliError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .map_err(|e| {
            CliError::Usage(format!(
                "{option}: {text:?} is not an RFC 3339 instant ({e}; e.g. 2024-03-04T00:01:00Z)"
            ))
        })
}

/// Loads and validates the configuration.
pub fn load_settings(source: &Source) -> Result<Settings, CliError> {
    Settings::load(source).map_err(|e| CliError::Usage(e.to_string()))
}

/// Changes the log level of a running process (SIGHUP).
pub type LogLevelHandle = Box<dyn Fn(&str) + Send + Sync>;

fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(format!(
        "{level},sqlx=warn,sea_orm=warn,sea_orm_migration=warn,sqlx::postgres::notice=warn"
    ))
}

/// Sets up logging to stderr: `RUST_LOG` when set, else `level`. Returns a handle that
/// changes the level later (ignored while `RUST_LOG` rules).
pub fn init_logging(level: &str, format: LogFormat) -> LogLevelHandle {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, fmt, reload};

    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let env_rules = from_env.is_some();
    let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| log_filter(level)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init();
    Box::new(move |level: &str| {
        if !env_rules {
            let _ = handle.reload(log_filter(level));
        }
    })
}

/// Opens the database and applies migrations when configured to.
pub async fn open_store(settings: &Settings) -> Result<Store, CliError> {
    let store = Store::connect(&settings.database)
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    if settings.database.auto_migrate {
        store
            .migrate()
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
    }
    Ok(store)
}

/// `migrate`: applies pending migrations.
pub async fn migrate(settings: &Settings) -> Result<ExitCode, CliError> {
    let store = Store::connect(&settings.database)
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let pending = store
        .pending_migrations()
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    store
        .migrate()
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    println!("migrations applied: {pending} (database is up to date)");
    Ok(ExitCode::SUCCESS)
}

/// `check-config`: validates the configuration and says what it resolved to.
pub fn check_config(settings: &Settings) -> ExitCode {
    println!("config ok: {settings:#?}");
    ExitCode::SUCCESS
}

/// `run-due`: executes every run due at `now` for the owned tenants, then exits.
pub async fn run_due(
    settings: &Settings,
    now: DateTime<Utc>,
    tenant: Option<i64>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = open_store(settings).await?;
    let tenants = match tenant {
        Some(id) => vec![
            store
                .tenant(id)
                .await
                .map_err(|e| CliError::Runtime(e.to_string()))?
                .ok_or_else(|| CliError::Usage(format!("--tenant: unknown tenant {id}")))?,
        ],
        None => store
            .tenants()
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?,
    };
    let engine = Engine::new(store, EngineSettings::from_settings(settings));
    let mut reports = Vec::with_capacity(tenants.len());
    for t in &tenants {
        reports.push(
            engine
                .run_due_for(t, now, &tokio_util::sync::CancellationToken::new())
                .await,
        );
    }
    print_reports("run-due", now, &reports, json);
    Ok(exit_for(&reports))
}

/// `preview`: the dry run of the runs due at `at` for one tenant; writes nothing.
pub async fn preview(
    settings: &Settings,
    tenant: i64,
    at: DateTime<Utc>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = open_store(settings).await?;
    let row = store
        .tenant(tenant)
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?
        .ok_or_else(|| CliError::Usage(format!("--tenant: unknown tenant {tenant}")))?;
    let engine = Engine::new(store, EngineSettings::from_settings(settings));
    let report = engine.preview(&row, at).await;
    let reports = [report];
    print_reports("preview", at, &reports, json);
    Ok(exit_for(&reports))
}

/// Exit 1 naming every failed tenant on stderr, else 0.
pub fn exit_for(reports: &[TenantReport]) -> ExitCode {
    let mut failed = false;
    for r in reports {
        if let Some(reason) = &r.misconfigured {
            eprintln!("tenant {} misconfigured: {reason}", r.tenant_id);
            failed = true;
        }
        if let Some(error) = &r.error {
            eprintln!("tenant {} failed: {error}", r.tenant_id);
            failed = true;
        }
        for run in r
            .runs
            .iter()
            .filter(|run| run.outcome == RunOutcome::Failed)
        {
            eprintln!(
                "tenant {} run {}..{} failed: {}",
                r.tenant_id,
                run.period_start_date,
                run.period_end_date,
                run.error.as_deref().unwrap_or("unknown error")
            );
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_reports(command: &str, at: DateTime<Utc>, reports: &[TenantReport], json: bool) {
    if json {
        let value = serde_json::json!({
            "command": command,
            "at": at,
            "tenants": reports,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print!("{}", render_text(command, at, reports));
    }
}

/// The human-readable summary of a `run-due` or `preview`.
pub fn render_text(command: &str, at: DateTime<Utc>, reports: &[TenantReport]) -> String {
    let mut out = String::new();
    let mut runs = 0usize;
    let mut invoices = 0usize;
    let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut skips: BTreeMap<&str, u64> = BTreeMap::new();
    let verb = if command == "preview" {
        "would create"
    } else {
        "created"
    };
    let _ = writeln!(out, "{command} at {}", at.to_rfc3339());
    for t in reports {
        let _ = writeln!(out, "tenant {} {:?}", t.tenant_id, t.name);
        if let Some(reason) = &t.misconfigured {
            let _ = writeln!(out, "  misconfigured, skipped: {reason}");
        }
        if let Some(error) = &t.error {
            let _ = writeln!(out, "  failed: {error}");
        }
        for m in &t.missed {
            let _ = writeln!(
                out,
                "  missed {}..{} (due {}): outside the catch-up window, not executed",
                m.period_start_date, m.period_end_date, m.due_at
            );
        }
        if t.runs.is_empty() && t.misconfigured.is_none() && t.error.is_none() {
            let _ = writeln!(out, "  nothing due");
        }
        for r in &t.runs {
            let outcome = match r.outcome {
                RunOutcome::Completed => "completed",
                RunOutcome::Previewed => "preview",
                RunOutcome::ClaimedElsewhere => "claimed by another process, left to it",
                RunOutcome::AlreadyCompleted => "already completed",
                RunOutcome::Failed => "FAILED",
                RunOutcome::Interrupted => "interrupted by shutdown; resumes at the next start",
            };
            let _ = writeln!(
                out,
                "  {} run {}..{} (due {}): {outcome}{}",
                r.schedule,
                r.period_start_date,
                r.period_end_date,
                r.due_at.to_rfc3339(),
                r.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            if matches!(r.outcome, RunOutcome::Completed | RunOutcome::Previewed) {
                runs += 1;
            }
            for i in &r.invoices {
                invoices += 1;
                *totals.entry(i.currency.clone()).or_default() += i.amount;
                let id = i
                    .invoice_id
                    .map(|id| format!("#{id}"))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "    {verb} invoice {id:<6} affiliate {:<8} {} {:>14} ({} conversions from {})",
                    i.affiliate_id,
                    i.currency,
                    i.amount.to_string(),
                    i.conversions_count,
                    i.period_start.to_rfc3339()
                );
            }
            for s in &r.skips {
                *skips.entry(s.reason).or_default() += 1;
                let amount = s
                    .amount
                    .map(|a| format!(" (amount {a})"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    skipped affiliate {:<8} {} {}{amount}",
                    s.affiliate_id, s.currency, s.reason
                );
            }
            if r.bad_conversions > 0 {
                let _ = writeln!(
                    out,
                    "    {} payable conversions left out as bad data (affiliate not the tenant's, or unreadable)",
                    r.bad_conversions
                );
            }
        }
    }
    let amounts = if totals.is_empty() {
        String::new()
    } else {
        format!(
            " ({})",
            totals
                .iter()
                .map(|(c, a)| format!("{c} {a}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let skip_text = if skips.is_empty() {
        "none".to_owned()
    } else {
        skips
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "summary: {runs} runs {}, {invoices} invoices {verb}{amounts}; skips: {skip_text}",
        if command == "preview" {
            "previewed"
        } else {
            "executed"
        }
    );
    out
}
