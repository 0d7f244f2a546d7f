//! The benchmark's correctness check, at its tiny size: the engine and the hand-written SQL
//! produce the same invoices, on SQLite and on PostgreSQL. (Its timings are not asserted:
//! speed lives in BENCHMARKS.md.)

mod common;

use std::process::Command;

fn bench(db: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_autoinvoice-bench"))
        .args(["--size", "tiny", "--db", db])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("same invoices: yes"), "{stdout}");
}

#[test]
fn engine_and_baseline_agree_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    bench(&format!("sqlite://{}", dir.path().display()));
}

#[tokio::test]
async fn engine_and_baseline_agree_on_postgres() {
    // Skips (loudly) or fails under CI like every PostgreSQL test when the server is missing.
    if common::TestDb::new(common::Kind::Postgres).await.is_none() {
        return;
    }
    let admin =
        std::env::var("AUTOINVOICE_TEST_PG_URL").unwrap_or_else(|_| common::DEFAULT_PG_URL.into());
    bench(&admin);
}
