//! The configuration (SPEC §7): the TOML file, then environment overrides, validated once
//! into typed [`Settings`]. Every error names the key and what is wrong with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{NaiveDate, NaiveTime};
use serde::Deserialize;

use crate::schedule::{Anchor, ScheduleSettings};

/// The default config file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/autoinvoice.toml";
/// The default database: an SQLite file in the working directory, created when missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://autoinvoice.db?mode=rwc";

/// A configuration that cannot be used, with the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("invalid config: {key}: {reason}")]
    Key { key: &'static str, reason: String },
}

fn key_error(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key,
        reason: reason.into(),
    }
}

// The file as written: every field optional (defaults below), unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    database: RawDatabase,
    schedule: RawSchedule,
    tenants: RawTenants,
    invoice: RawInvoice,
    http: RawHttp,
    cluster: RawCluster,
    log: RawLog,
    engine: RawEngine,
    shutdown_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEngine {
    concurrency: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: Option<String>,
    max_connections: Option<u32>,
    auto_migrate: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSchedule {
    run_time: Option<String>,
    biweekly_anchor: Option<String>,
    catch_up_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTenants {
    refresh_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawInvoice {
    status: Option<String>,
    comment: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    listen: Option<String>,
    admin_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCluster {
    mode: Option<String>,
    shard_index: Option<u32>,
    shard_count: Option<u32>,
    node_id: Option<String>,
    heartbeat_interval: Option<String>,
    node_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

/// Which database back-end a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Database settings.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    pub url: String,
    pub backend: Backend,
    pub max_connections: u32,
    pub auto_migrate: bool,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("backend", &self.backend)
            .field("max_connections", &self.max_connections)
            .field("auto_migrate", &self.auto_migrate)
            .finish()
    }
}

/// A URL with its password, if any, replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Invoice settings: what an auto-generated invoice looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceSettings {
    pub status: String,
    pub comment: String,
}

/// HTTP settings.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// How this node shares tenants with others (SPEC §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterMode {
    Single,
    Static { shard_index: u32, shard_count: u32 },
    Dynamic,
}

/// Cluster settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    pub mode: ClusterMode,
    pub node_id: String,
    pub heartbeat_interval: Duration,
    pub node_ttl: Duration,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub schedule: ScheduleSettings,
    pub refresh_interval: Duration,
    pub invoice: InvoiceSettings,
    pub http: HttpSettings,
    pub cluster: ClusterSettings,
    pub log: LogSettings,
    /// Affiliates settled at once, and runs executed at once, by `serve` (not in SPEC §7:
    /// added so SIGHUP can tune it live).
    pub concurrency: u32,
    pub shutdown_timeout: Duration,
}

/// Invoice statuses an auto invoice may be created with (`declined` would make no sense).
const CREATABLE_STATUSES: &[&str] = &["waiting", "pending", "partly_paid", "completed"];
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// Where the configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// `--config FILE`: must be readable. `None`: the default path, if it exists.
    pub file: Option<PathBuf>,
    /// `--database-url`, which beats the file and the environment.
    pub database_url: Option<String>,
}

impl Settings {
    /// Loads the file, applies the process environment, validates.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        Self::load_with_env(source, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (for tests).
    pub fn load_with_env(
        source: &Source,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match &source.file {
            Some(path) => read(path)?,
            None => match std::fs::read_to_string(DEFAULT_PATH) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => {
                    return Err(ConfigError::Unreadable {
                        path: DEFAULT_PATH.into(),
                        reason: e.to_string(),
                    });
                }
            },
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("AUTOINVOICE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env.iter().cloned().collect())),
            );
        if let Some((_, url)) = env.iter().find(|(k, _)| k == "AUTOINVOICE_DATABASE_URL") {
            builder = builder
                .set_override("database.url", url.as_str())
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if let Some(url) = &source.database_url {
            builder = builder
                .set_override("database.url", url.as_str())
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        let raw: RawConfig = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Self::validate(raw)
    }

    /// Parses a config file's text alone (no environment), for tests and `check-config`.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let url = raw
            .database
            .url
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(key_error(
                "database.url",
                format!(
                    "unsupported URL {:?} (expected sqlite:… or postgres://…)",
                    redact_url(&url)
                ),
            ));
        };
        let max_connections = raw.database.max_connections.unwrap_or(10);
        if max_connections == 0 {
            return Err(key_error("database.max_connections", "must be at least 1"));
        }

        let run_time = match raw.schedule.run_time.as_deref() {
            None => NaiveTime::from_hms_opt(0, 1, 0).expect("valid"),
            Some(s) => NaiveTime::parse_from_str(s, "%H:%M")
                .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
                .map_err(|_| {
                    key_error(
                        "schedule.run_time",
                        format!("{s:?} is not a time of day (expected HH:MM, e.g. \"00:01\")"),
                    )
                })?,
        };
        let default_anchor = match raw.schedule.biweekly_anchor.as_deref() {
            None => Anchor::DEFAULT,
            Some(s) => {
                let date = s.parse::<NaiveDate>().map_err(|_| {
                    key_error(
                        "schedule.biweekly_anchor",
                        format!("{s:?} is not a date (expected YYYY-MM-DD)"),
                    )
                })?;
                Anchor::new(date)
                    .map_err(|e| key_error("schedule.biweekly_anchor", e.to_string()))?
            }
        };
        let catch_up_window = duration(
            "schedule.catch_up_window",
            raw.schedule.catch_up_window.as_deref(),
            "35d",
        )?;
        let catch_up_window = chrono::Duration::from_std(catch_up_window)
            .map_err(|_| key_error("schedule.catch_up_window", "too long"))?;

        let refresh_interval = duration(
            "tenants.refresh_interval",
            raw.tenants.refresh_interval.as_deref(),
            "30s",
        )?;
        if refresh_interval.is_zero() {
            return Err(key_error(
                "tenants.refresh_interval",
                "must be longer than 0s",
            ));
        }

        let status = raw.invoice.status.unwrap_or_else(|| "waiting".into());
        if !CREATABLE_STATUSES.contains(&status.as_str()) {
            return Err(key_error(
                "invoice.status",
                format!(
                    "{status:?} is not a status an invoice can be created with (expected one of {})",
                    CREATABLE_STATUSES.join(", ")
                ),
            ));
        }
        let comment = raw
            .invoice
            .comment
            .unwrap_or_else(|| "Created by auto-generation program".into());

        let listen_text = raw.http.listen.unwrap_or_else(|| "127.0.0.1:9187".into());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            key_error(
                "http.listen",
                format!(
                    "{listen_text:?} is not an address (expected IP:PORT, e.g. 127.0.0.1:9187)"
                ),
            )
        })?;
        let admin_token = raw.http.admin_token.filter(|t| !t.is_empty());

        let mode = match raw.cluster.mode.as_deref().unwrap_or("single") {
            "single" => ClusterMode::Single,
            "static" => {
                let shard_count = raw.cluster.shard_count.ok_or_else(|| {
                    key_error(
                        "cluster.shard_count",
                        "required when cluster.mode = \"static\"",
                    )
                })?;
                let shard_index = raw.cluster.shard_index.ok_or_else(|| {
                    key_error(
                        "cluster.shard_index",
                        "required when cluster.mode = \"static\"",
                    )
                })?;
                if shard_count == 0 {
                    return Err(key_error("cluster.shard_count", "must be at least 1"));
                }
                if shard_index >= shard_count {
                    return Err(key_error(
                        "cluster.shard_index",
                        format!("{shard_index} is not below cluster.shard_count ({shard_count})"),
                    ));
                }
                ClusterMode::Static {
                    shard_index,
                    shard_count,
                }
            }
            "dynamic" => ClusterMode::Dynamic,
            other => {
                return Err(key_error(
                    "cluster.mode",
                    format!("{other:?} is not a mode (expected single, static or dynamic)"),
                ));
            }
        };
        if backend == Backend::Sqlite && mode != ClusterMode::Single {
            return Err(key_error(
                "cluster.mode",
                "SQLite supports only \"single\"; use PostgreSQL to run several nodes",
            ));
        }
        let node_id = raw
            .cluster
            .node_id
            .filter(|n| !n.is_empty())
            .unwrap_or_else(default_node_id);
        let heartbeat_interval = duration(
            "cluster.heartbeat_interval",
            raw.cluster.heartbeat_interval.as_deref(),
            "5s",
        )?;
        let node_ttl = duration("cluster.node_ttl", raw.cluster.node_ttl.as_deref(), "20s")?;
        if heartbeat_interval.is_zero() {
            return Err(key_error(
                "cluster.heartbeat_interval",
                "must be longer than 0s",
            ));
        }
        if node_ttl <= heartbeat_interval {
            return Err(key_error(
                "cluster.node_ttl",
                "must be longer than cluster.heartbeat_interval",
            ));
        }

        let level = raw.log.level.unwrap_or_else(|| "info".into());
        if !LOG_LEVELS.contains(&level.as_str()) {
            return Err(key_error(
                "log.level",
                format!(
                    "{level:?} is not a level (expected one of {})",
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        let format = match raw.log.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(key_error(
                    "log.format",
                    format!("{other:?} is not a format (expected text or json)"),
                ));
            }
        };
        let shutdown_timeout =
            duration("shutdown_timeout", raw.shutdown_timeout.as_deref(), "30s")?;
        let concurrency = raw.engine.concurrency.unwrap_or(4);
        if !(1..=256).contains(&concurrency) {
            return Err(key_error("engine.concurrency", "must be between 1 and 256"));
        }

        Ok(Self {
            database: DatabaseSettings {
                url,
                backend,
                max_connections,
                auto_migrate: raw.database.auto_migrate.unwrap_or(true),
            },
            schedule: ScheduleSettings {
                run_time,
                catch_up_window,
                default_anchor,
            },
            refresh_interval,
            invoice: InvoiceSettings { status, comment },
            http: HttpSettings {
                listen,
                admin_token,
            },
            cluster: ClusterSettings {
                mode,
                node_id,
                heartbeat_interval,
                node_ttl,
            },
            log: LogSettings { level, format },
            concurrency,
            shutdown_timeout,
        })
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn duration(
    key: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or(default);
    humantime::parse_duration(text).map_err(|e| {
        key_error(
            key,
            format!("{text:?} is not a duration ({e}; expected e.g. \"30s\", \"35d\")"),
        )
    })
}

/// `host-pid`: unique per process on a host, readable in logs and in `invoice_runs.claimed_by`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Settings::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.database.url, DEFAULT_DATABASE_URL);
        assert_eq!(s.database.backend, Backend::Sqlite);
        assert!(s.database.auto_migrate);
        assert_eq!(s.schedule, ScheduleSettings::default());
        assert_eq!(s.refresh_interval, Duration::from_secs(30));
        assert_eq!(s.invoice.status, "waiting");
        assert_eq!(s.invoice.comment, "Created by auto-generation program");
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:9187");
        assert_eq!(s.http.admin_token, None);
        assert_eq!(s.cluster.mode, ClusterMode::Single);
        assert_eq!(s.cluster.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(s.cluster.node_ttl, Duration::from_secs(20));
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn the_shipped_file_is_valid_and_says_the_defaults() {
        let text = include_str!("../config/autoinvoice.toml");
        let shipped = Settings::from_toml(text).unwrap();
        let mut defaults = Settings::from_toml("").unwrap();
        defaults
            .cluster
            .node_id
            .clone_from(&shipped.cluster.node_id);
        assert_eq!(shipped, defaults);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[schedule]\nrun_time = \"25:00\"").contains("schedule.run_time"));
        assert!(
            err("[schedule]\nbiweekly_anchor = \"2024-01-02\"").contains("is a Tue, not a Monday")
        );
        assert!(err("[schedule]\ncatch_up_window = \"soon\"").contains("schedule.catch_up_window"));
        assert!(err("[invoice]\nstatus = \"declined\"").contains("invoice.status"));
        assert!(err("[http]\nlisten = \"nowhere\"").contains("http.listen"));
        assert!(err("[cluster]\nmode = \"static\"").contains("cluster.shard_count"));
        assert!(err("[cluster]\nmode = \"dynamic\"").contains("SQLite supports only"));
        assert!(err("[log]\nlevel = \"loud\"").contains("log.level"));
        assert!(err("[database]\nurl = \"mysql://x\"").contains("database.url"));
        assert!(err("shutdown_timeout = \"-3s\"").contains("shutdown_timeout"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        assert!(
            err("[schedule]\nrun_tme = \"00:01\"").contains("run_tme"),
            "{}",
            err("[schedule]\nrun_tme = \"00:01\"")
        );
        assert!(err("colour = \"blue\"").contains("colour"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let source = Source::default();
        let env = [
            (
                "AUTOINVOICE_DATABASE_URL".to_owned(),
                "postgres://u:secret@h/db".to_owned(),
            ),
            (
                "AUTOINVOICE__SCHEDULE__RUN_TIME".to_owned(),
                "02:30".to_owned(),
            ),
            (
                "AUTOINVOICE__DATABASE__MAX_CONNECTIONS".to_owned(),
                "3".to_owned(),
            ),
            (
                "AUTOINVOICE__CLUSTER__MODE".to_owned(),
                "dynamic".to_owned(),
            ),
        ];
        let s = Settings::load_with_env(&source, env).unwrap();
        assert_eq!(s.database.backend, Backend::Postgres);
        assert_eq!(s.database.max_connections, 3);
        assert_eq!(
            s.schedule.run_time,
            NaiveTime::from_hms_opt(2, 30, 0).unwrap()
        );
        assert_eq!(s.cluster.mode, ClusterMode::Dynamic);
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn a_named_file_that_cannot_be_read_is_an_error() {
        let source = Source {
            file: Some("/nonexistent/autoinvoice.toml".into()),
            database_url: None,
        };
        let e = Settings::load_with_env(&source, [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/autoinvoice.toml"), "{e}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
