//! A throwaway PostgreSQL cluster (initdb + pg_ctl on a free port) that a test may stop and
//! start again, for database-outage scenarios.

use std::path::PathBuf;
use std::process::Command;

/// A private PostgreSQL server, removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn run(args: &[&str]) {
    // initdb and pg_ctl refuse to run as root: run them as the postgres user.
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        Command::new(args[0])
    };
    let cmd = if is_root() {
        cmd.args(args)
    } else {
        cmd.args(&args[1..])
    };
    let out = cmd
        .output()
        .expect("PostgreSQL's server binaries (initdb, pg_ctl) are installed");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
}

impl PgCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.path().join("data");
        run(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        let cluster = Self { dir, port };
        cluster.up();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            self.dir.path().display()
        );
        run(&[
            "pg_ctl",
            "-D",
            self.data().to_str().unwrap(),
            "-o",
            &options,
            "-l",
            self.dir.path().join("server.log").to_str().unwrap(),
            "-w",
            "start",
        ]);
    }

    /// Stops the server at once (connections are cut).
    pub fn down(&self) {
        run(&[
            "pg_ctl",
            "-D",
            self.data().to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D"])
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
