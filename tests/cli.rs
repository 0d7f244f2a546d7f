//! The command line's contract (SPEC §8): exit statuses and one-line errors that name the
//! problem, through the real binary.

mod common;

use std::process::Command;

use common::{Kind, TestDb};

fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).trim_end().to_owned();
    assert_eq!(text.lines().count(), 1, "expected one line, got:\n{text}");
    text
}

fn bare() -> Command {
    common::binary()
}

#[tokio::test]
async fn a_malformed_now_is_a_usage_error() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let out = db
        .command()
        .args(["run-due", "--now", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = one_line(&out.stderr);
    assert!(
        line.contains("--now") && line.contains("\"yesterday\""),
        "{line}"
    );
}

#[tokio::test]
async fn a_missing_argument_is_a_usage_error_naming_it() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let out = db.command().args(["run-due"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out.stderr).contains("--now"));
}

#[tokio::test]
async fn an_unknown_tenant_is_a_usage_error() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    for args in [
        &[
            "run-due",
            "--now",
            "2024-01-01T00:00:00Z",
            "--tenant",
            "999",
        ][..],
        &["preview", "--at", "2024-01-01T00:00:00Z", "--tenant", "999"][..],
    ] {
        let out = db.command().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(one_line(&out.stderr).contains("unknown tenant 999"));
    }
}

#[test]
fn an_invalid_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[schedule]\nrun_time = \"25:00\"\n").unwrap();
    let out = bare()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = one_line(&out.stderr);
    assert!(
        line.contains("schedule.run_time") && line.contains("25:00"),
        "{line}"
    );

    std::fs::write(&file, "[schedule]\nrun_tim = \"00:01\"\n").unwrap();
    let out = bare()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out.stderr).contains("run_tim"));
}

#[test]
fn an_unreadable_config_file_is_an_error() {
    let out = bare()
        .args(["--config", "/nonexistent/autoinvoice.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out.stderr).contains("/nonexistent/autoinvoice.toml"));
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let out = bare()
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/autoinvoice.toml"),
            "check-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_unreachable_database_is_a_runtime_failure() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty.toml");
    std::fs::write(&file, "").unwrap();
    let out = bare()
        .arg("--config")
        .arg(&file)
        .args([
            "--database-url",
            "postgres://nobody:secret@127.0.0.1:1/none",
            "run-due",
            "--now",
            "2024-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = one_line(&out.stderr);
    assert!(
        line.contains("cannot connect to database") && line.contains("127.0.0.1:1"),
        "{line}"
    );
    assert!(!line.contains("secret"), "password leaked: {line}");
}

#[tokio::test]
async fn migrate_is_idempotent() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    for _ in 0..2 {
        let out = db.command().arg("migrate").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_demo_runs_on_a_fresh_sqlite_file_and_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = bare().current_dir(dir.path()).arg("demo").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(dir.path().join("autoinvoice.db").exists());
    for expected in [
        "created invoice",
        "not_active",
        "no_payment_system",
        "misconfigured, skipped: unknown time zone \"Mars/Olympus\"",
        "nothing due",
    ] {
        assert!(
            first.contains(expected),
            "demo output lacks {expected:?}:\n{first}"
        );
    }
    let second = run();
    assert!(second.contains("already seeded"), "{second}");
    assert!(second.contains("0 invoices created"), "{second}");
}
