//! The real `autoinvoice serve` as a child process, and an HTTP client for it.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::TestDb;

/// A running `autoinvoice serve`, killed if still alive when dropped.
pub struct Daemon {
    child: std::sync::Mutex<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn start(db: &TestDb, config: &Path, clock_start: &str, envs: &[(&str, &str)]) -> Self {
        let log = config.with_extension(format!("{}.log", std::process::id() ^ rand_suffix()));
        let mut cmd = super::binary();
        cmd.args(["--config"])
            .arg(config)
            .args([
                "--database-url",
                &db.url,
                "serve",
                "--clock-start",
                clock_start,
            ])
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Self {
            child: std::sync::Mutex::new(cmd.spawn().unwrap()),
            log,
        }
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    /// Waits until the log contains `needle` `times` times.
    pub fn wait_log(&self, needle: &str, times: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.log().matches(needle).count() < times {
            if let Some(status) = self.child.lock().unwrap().try_wait().unwrap() {
                panic!(
                    "daemon exited ({status}) before {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} ×{times} in the log within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_ready(&self) {
        self.wait_log(" ready ", 1, Duration::from_secs(60));
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([
                &format!("-{name}"),
                &self.child.lock().unwrap().id().to_string(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon still running after {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", self.log());
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

pub fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join(format!("autoinvoice-{}.toml", rand_suffix()));
    std::fs::write(&path, text).unwrap();
    path
}

pub const BASE_CONFIG: &str = "[tenants]\nrefresh_interval = \"1s\"\n[http]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"info\"\n";

/// Polls `check` until it returns true, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Daemon {
    /// The address the daemon's HTTP server bound (it logs it; configs use port 0).
    pub fn http_base(&self) -> String {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("HTTP listening"))
            .unwrap_or_else(|| panic!("no HTTP address in the log:\n{log}"));
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap();
        format!("http://{addr}")
    }
}

/// The value of `series` (`name{labels}`) on a Prometheus metrics page, if present.
pub fn try_metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// As [`try_metric`], panicking with the page when the series is missing.
pub fn metric(page: &str, series: &str) -> f64 {
    try_metric(page, series).unwrap_or_else(|| panic!("no {series} in:\n{page}"))
}

/// A response: status, body, content type.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A small blocking HTTP client for the daemon's API.
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(base: String, token: Option<&str>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Self {
            base,
            token: token.map(str::to_owned),
            agent,
        }
    }

    fn finish(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut response = response.expect("an HTTP response");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Reply {
            status,
            body,
            content_type,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::finish(req.call())
    }

    pub fn get_with(&self, path: &str, authorization: Option<&str>) -> Reply {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        Self::finish(req.call())
    }

    pub fn send(&self, method: &str, path: &str, body: &str) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "PUT" => self.agent.put(url),
            "POST" => self.agent.post(url),
            other => panic!("unsupported method {other}"),
        };
        req = req.header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::finish(req.send(body))
    }
}
