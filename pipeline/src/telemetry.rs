//! Metrics, health and readiness: what an operator's dashboards and orchestrator read.
//!
//! Metric names are `recon_<name>_<unit>[_total]` with bounded label values (event types,
//! reject reasons, table names, partitions). The library records through the `metrics` facade
//! (free when nothing is installed); `recon-pipeline run` installs the Prometheus exporter and
//! serves, on `[observability] listen`:
//! - `GET /metrics`: Prometheus text format;
//! - `GET /healthz`: 200 while the process runs (liveness);
//! - `GET /readyz`: 200 once recovery is done and the first checkpoint after it completed,
//!   503 before (readiness), and 503 with the reason while `run --hold-on-stop` holds after a
//!   stop.
//!
//! The first thing to alert on: `recon_seconds_since_last_commit` (updated every second).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

static READY: AtomicBool = AtomicBool::new(false);
/// Why the process holds after a stop (`run --hold-on-stop`); `/readyz` answers 503 with it.
static HELD: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
static LAST_COMMIT_UNIX_MS: AtomicI64 = AtomicI64::new(0);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Installs the Prometheus recorder and serves `/metrics`, `/healthz` and `/readyz` on `listen`;
/// returns the bound address (useful with port 0).
pub async fn serve(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])?
        .install_recorder()?;
    let render = Arc::new(handle);
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get({
                let h = Arc::clone(&render);
                move || {
                    let h = Arc::clone(&h);
                    async move { h.render() }
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(|| async {
                if let Some(reason) = HELD.lock().expect("held lock").clone() {
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, reason);
                }
                if READY.load(Ordering::Relaxed) {
                    (axum::http::StatusCode::OK, "ready".to_string())
                } else {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "recovering".to_string(),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("observability.listen {listen}: cannot bind: {e}; pick a free address")
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics/health server stopped");
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            render.run_upkeep();
            let last = LAST_COMMIT_UNIX_MS.load(Ordering::Relaxed);
            if last > 0 {
                gauge!("recon_seconds_since_last_commit").set((now_ms() - last) as f64 / 1000.0);
            }
        }
    });
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    Ok(bound)
}

/// The job recovered: generation claimed, pending commits published, state restored.
pub fn recovered(generation: u64, trips: usize, took: Duration) {
    gauge!("recon_generation").set(generation as f64);
    counter!("recon_restarts_total").increment(1);
    gauge!("recon_open_trips").set(trips as f64);
    histogram!("recon_recovery_duration_seconds").record(took.as_secs_f64());
}

/// The job stopped with an error of `class` (`transient`, `config`, `operator-needed`,
/// `fenced`): `recon_stopped{class} 1`. Visible while the process lives (`--hold-on-stop`).
pub fn stopped(class: &'static str) {
    gauge!("recon_stopped", "class" => class).set(1.0);
    READY.store(false, Ordering::Relaxed);
}

/// The job runs: `recon_stopped{class} 0` for `class` (exported from the start, so the alert
/// and the dashboard see the series before any stop).
pub fn running(class: &'static str) {
    gauge!("recon_stopped", "class" => class).set(0.0);
}

/// `run --hold-on-stop`: the process stays up after a stop; `/readyz` answers 503 with why.
pub fn hold(class: &'static str, message: &str) {
    stopped(class);
    *HELD.lock().expect("held lock") = Some(format!(
        "stopped ({class}); nothing is written: {message}\n"
    ));
}

/// Consecutive generation claims at the log head without a checkpoint between them (a crash
/// loop after the claim); each is one log entry, pruned after the next commit.
pub fn consecutive_claims(n: u64) {
    gauge!("recon_log_consecutive_claims").set(n as f64);
}

/// Records consumed by one batch, by outcome.
pub fn records(accepted: u64, duplicates: u64, rejected: u64) {
    counter!("recon_records_total", "outcome" => "accepted").increment(accepted);
    counter!("recon_records_total", "outcome" => "duplicate").increment(duplicates);
    counter!("recon_records_total", "outcome" => "rejected").increment(rejected);
}

/// One dead-lettered record with its reason code.
pub fn rejected(reason: &'static str) {
    counter!("recon_rejected_total", "reason" => reason).increment(1);
}

/// A checkpoint completed.
pub fn checkpoint(
    id: u64,
    took: Duration,
    state_bytes: usize,
    pending_files: usize,
    pending_bytes: u64,
    trips: usize,
) {
    histogram!("recon_checkpoint_duration_seconds").record(took.as_secs_f64());
    gauge!("recon_checkpoint_state_bytes").set(state_bytes as f64);
    gauge!("recon_last_checkpoint_id").set(id as f64);
    gauge!("recon_last_checkpoint_timestamp_seconds").set(now_ms() as f64 / 1000.0);
    gauge!("recon_pending_files").set(pending_files as f64);
    gauge!("recon_pending_bytes").set(pending_bytes as f64);
    gauge!("recon_open_trips").set(trips as f64);
    READY.store(true, Ordering::Relaxed);
}

/// The input stood still for `took` to cut a checkpoint.
pub fn checkpoint_pause(took: Duration) {
    histogram!("recon_checkpoint_pause_seconds").record(took.as_secs_f64());
}

/// Every table holds the checkpoints through `id`.
pub fn committed(id: u64, took: Duration, tables_landed: u64) {
    histogram!("recon_commit_duration_seconds").record(took.as_secs_f64());
    counter!("recon_commits_total").increment(tables_landed);
    gauge!("recon_last_committed_checkpoint_id").set(id as f64);
    gauge!("recon_pending_files").set(0.0);
    gauge!("recon_pending_bytes").set(0.0);
    LAST_COMMIT_UNIX_MS.store(now_ms(), Ordering::Relaxed);
    gauge!("recon_seconds_since_last_commit").set(0.0);
}

/// Fleet committer: commit sequence `id` is in every table, `took` after its gathering began.
pub fn committer_commit(id: u64, took: Duration) {
    histogram!("recon_committer_commit_duration_seconds").record(took.as_secs_f64());
    gauge!("recon_committer_last_sequence").set(id as f64);
    LAST_COMMIT_UNIX_MS.store(now_ms(), Ordering::Relaxed);
    gauge!("recon_seconds_since_last_commit").set(0.0);
    READY.store(true, Ordering::Relaxed);
}

/// Fleet committer: completed checkpoints of `task` found at a gathering (its commit lag).
pub fn committer_task_lag(task: u32, checkpoints: u64) {
    gauge!("recon_committer_task_lag_checkpoints", "task" => task.to_string())
        .set(checkpoints as f64);
}

/// Fleet worker: tasks this worker runs now.
pub fn worker_tasks(n: usize) {
    gauge!("recon_worker_tasks").set(n as f64);
    if n > 0 {
        READY.store(true, Ordering::Relaxed);
    }
}

/// Fleet worker: a rebalance gave (`assigned`) or took (`revoked`) tasks.
pub fn worker_rebalance(kind: &'static str, tasks: usize) {
    counter!("recon_worker_rebalances_total", "kind" => kind).increment(1);
    counter!("recon_worker_task_moves_total", "kind" => kind).increment(tasks as u64);
}

/// Fleet worker: from a task's assignment to its first completed checkpoint here.
pub fn task_handover(took: Duration) {
    histogram!("recon_worker_task_handover_seconds").record(took.as_secs_f64());
}

/// Consumer lag of one partition (records between the position and the high watermark).
pub fn lag(partition: i32, records: i64) {
    gauge!("recon_consumer_lag_records", "partition" => partition.to_string())
        .set(records.max(0) as f64);
}

/// Longest time an owned partition with records waiting has delivered none (0 when none is
/// stalled); the watchdog acts at `source.stall_timeout_ms`.
pub fn source_stalled(stalled: std::time::Duration) {
    gauge!("recon_source_stalled_seconds").set(stalled.as_secs_f64());
}

/// The watchdog recreated the Kafka consumer after a stall (`n` = 1), or registers the
/// counter at 0 when the source starts (`n` = 0), so that it is exported before the first one.
pub fn source_recovered(n: u64) {
    counter!("recon_source_recoveries_total").increment(n);
}

/// One table maintained by `recon-pipeline maintain` (snapshots expired, orphans deleted).
pub fn maintained(
    table: &str,
    snapshots_expired: u64,
    files_deleted: u64,
    bytes_deleted: u64,
    failed: bool,
) {
    let t = table.to_string();
    counter!("recon_maintain_snapshots_expired_total", "table" => t.clone())
        .increment(snapshots_expired);
    counter!("recon_maintain_files_deleted_total", "table" => t.clone()).increment(files_deleted);
    counter!("recon_maintain_deleted_bytes_total", "table" => t.clone()).increment(bytes_deleted);
    counter!("recon_maintain_failures_total", "table" => t).increment(u64::from(failed));
}

/// Whether the job is ready (for tests).
pub fn is_ready() -> bool {
    READY.load(Ordering::Relaxed)
}
