//! Prometheus metrics (SPEC §10). Names and labels live here only; no label's values grow
//! with tenants or affiliates. Without an installed recorder (`run-due`, `preview`) every
//! call is a no-op.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("autoinvoice_run_duration_seconds".into()),
            &[
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe_counter!(
        "autoinvoice_runs_total",
        "Runs executed, by outcome (completed, failed)."
    );
    describe_counter!("autoinvoice_invoices_created_total", "Invoices created.");
    describe_counter!(
        "autoinvoice_decisions_total",
        "Per (affiliate, currency) decisions of executed runs, by reason (created for creations)."
    );
    describe_histogram!(
        "autoinvoice_run_duration_seconds",
        metrics::Unit::Seconds,
        "Wall time of executed runs, from claim to completion."
    );
    describe_gauge!(
        "autoinvoice_tenants_owned",
        "Tenants this node owns and schedules."
    );
    describe_gauge!(
        "autoinvoice_tenants_misconfigured",
        "Owned tenants whose stored settings cannot be scheduled."
    );
    describe_gauge!(
        "autoinvoice_runs_overdue",
        "Runs that are due and not completed."
    );
    describe_counter!(
        "autoinvoice_runs_missed_total",
        "Runs that fell outside the catch-up window (recorded, never executed)."
    );
    describe_counter!(
        "autoinvoice_config_reloads_total",
        "Config reloads, by result (ok, error)."
    );
    describe_gauge!(
        "autoinvoice_cluster_live_nodes",
        "Nodes heard from within cluster.node_ttl."
    );
    describe_counter!(
        "autoinvoice_bad_conversions_total",
        "Payable conversions left out as bad data (affiliate not the tenant's, unreadable)."
    );
    describe_counter!(
        "autoinvoice_ownership_changes_total",
        "Tenants this node started or stopped owning."
    );
    describe_counter!(
        "autoinvoice_runs_taken_over_total",
        "Runs this node claimed after another node's lease expired."
    );
    describe_gauge!(
        "autoinvoice_timers_armed",
        "Tenant timers armed (at most one per owned tenant)."
    );
    describe_gauge!("autoinvoice_build_info", "Build information; always 1.");
    gauge!("autoinvoice_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for outcome in ["completed", "failed"] {
        counter!("autoinvoice_runs_total", "outcome" => outcome).absolute(0);
    }
    for result in ["ok", "error"] {
        counter!("autoinvoice_config_reloads_total", "result" => result).absolute(0);
    }
    for reason in [
        "created",
        "not_active",
        "no_payment_system",
        "already_invoiced",
        "non_positive_amount",
        "no_payable_conversions",
    ] {
        counter!("autoinvoice_decisions_total", "reason" => reason).absolute(0);
    }
    counter!("autoinvoice_invoices_created_total").absolute(0);
    counter!("autoinvoice_runs_missed_total").absolute(0);
    counter!("autoinvoice_bad_conversions_total").absolute(0);
    counter!("autoinvoice_ownership_changes_total").absolute(0);
    counter!("autoinvoice_runs_taken_over_total").absolute(0);
    gauge!("autoinvoice_runs_overdue").set(0.0);
    gauge!("autoinvoice_timers_armed").set(0.0);
    gauge!("autoinvoice_tenants_owned").set(0.0);
    gauge!("autoinvoice_tenants_misconfigured").set(0.0);
    Ok(handle)
}

/// A run ended as `completed` or `failed` after `seconds`.
pub fn run_finished(completed: bool, seconds: f64) {
    let outcome = if completed { "completed" } else { "failed" };
    counter!("autoinvoice_runs_total", "outcome" => outcome).increment(1);
    histogram!("autoinvoice_run_duration_seconds").record(seconds);
}

pub fn invoices_created(n: u64) {
    counter!("autoinvoice_invoices_created_total").increment(n);
}

pub fn decisions(label: &'static str, n: u64) {
    counter!("autoinvoice_decisions_total", "reason" => label).increment(n);
}

pub fn run_missed() {
    counter!("autoinvoice_runs_missed_total").increment(1);
}

pub fn bad_conversions(n: u64) {
    counter!("autoinvoice_bad_conversions_total").increment(n);
}

pub fn config_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!("autoinvoice_config_reloads_total", "result" => result).increment(1);
}

pub fn tenants(owned: usize, misconfigured: usize) {
    gauge!("autoinvoice_tenants_owned").set(owned as f64);
    gauge!("autoinvoice_tenants_misconfigured").set(misconfigured as f64);
}

/// Adds to (or, negative, takes from) the runs due and not completed.
pub fn overdue(delta: i64) {
    gauge!("autoinvoice_runs_overdue").increment(delta as f64);
}

pub fn live_nodes(n: usize) {
    gauge!("autoinvoice_cluster_live_nodes").set(n as f64);
}

pub fn ownership_changes(n: u64) {
    counter!("autoinvoice_ownership_changes_total").increment(n);
}

pub fn run_taken_over() {
    counter!("autoinvoice_runs_taken_over_total").increment(1);
}

/// A tenant timer was armed (+1) or cancelled/fired (-1).
pub fn timers_armed(delta: i64) {
    gauge!("autoinvoice_timers_armed").increment(delta as f64);
}
