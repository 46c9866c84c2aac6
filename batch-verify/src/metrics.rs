//! The run as Prometheus metrics, for node_exporter's textfile collector
//! (`--metrics-textfile /var/lib/node_exporter/textfile/recon_verify.prom`).
//!
//! Every run replaces the whole file atomically (a temporary file beside it, fsync, rename), so
//! the collector never reads half a file and a failed run leaves no stale counts behind. Series,
//! each labelled `job` (the pipeline's `job_id`) and `truth` (`kafka` | `postgres` | `files`):
//!
//! | metric | value |
//! |---|---|
//! | `recon_verify_last_run_timestamp_seconds` | when the run ended (Unix time) |
//! | `recon_verify_exit_code` | 0 clean, 1 discrepancies, 2 could not verify, 3 empty day |
//! | `recon_verify_duration_seconds` | wall time of the run |
//! | `recon_verify_events_checked` | distinct truth events of the day (absent when it could not verify) |
//! | `recon_verify_discrepancies{check}` | count per discrepancy kind, every kind present (absent when it could not verify) |
//! | `recon_verify_business_day{business_date,time_zone}` | 1: which day the run verified |
//!
//! Alert on `recon_verify_exit_code != 0` and on `time() - recon_verify_last_run_timestamp_seconds
//! > 26 * 3600` (the nightly run did not happen).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use metrics::{describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::report::{Kind, Report};

/// What one run ended with, as the metrics need it.
#[derive(Clone, Debug)]
pub struct RunOutcome<'a> {
    /// The pipeline's job id (`unknown` when the configuration could not be read).
    pub job: String,
    /// `kafka`, `postgres` or `files`.
    pub truth: String,
    /// The business day, `YYYY-MM-DD`.
    pub business_date: String,
    /// Its IANA zone.
    pub time_zone: String,
    /// The process exit code: 0, 1, 2 or 3.
    pub exit_code: i32,
    /// Wall time of the run.
    pub duration: Duration,
    /// When it ended.
    pub finished_at: chrono::DateTime<chrono::Utc>,
    /// The report, when the run verified (exit 0 or 1).
    pub report: Option<&'a Report>,
}

/// The Prometheus text exposition of `run`.
pub fn render(run: &RunOutcome<'_>) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_gauge!(
            "recon_verify_last_run_timestamp_seconds",
            "When the last batch-verify run ended (Unix time)."
        );
        describe_gauge!(
            "recon_verify_exit_code",
            "Exit code of the last run: 0 clean, 1 discrepancies, 2 could not verify, 3 empty day."
        );
        describe_gauge!(
            "recon_verify_duration_seconds",
            "Wall time of the last run."
        );
        describe_gauge!(
            "recon_verify_events_checked",
            "Distinct truth events of the business day the last run verified."
        );
        describe_gauge!(
            "recon_verify_discrepancies",
            "Discrepancies the last run found, per kind (check)."
        );
        describe_gauge!(
            "recon_verify_business_day",
            "The business day (and zone) the last run verified; always 1."
        );
        let labels = [("job", run.job.clone()), ("truth", run.truth.clone())];
        let ts = run.finished_at.timestamp_millis() as f64 / 1000.0;
        gauge!("recon_verify_last_run_timestamp_seconds", &labels).set(ts);
        gauge!("recon_verify_exit_code", &labels).set(f64::from(run.exit_code));
        gauge!("recon_verify_duration_seconds", &labels).set(run.duration.as_secs_f64());
        let mut day = labels.to_vec();
        day.push(("business_date", run.business_date.clone()));
        day.push(("time_zone", run.time_zone.clone()));
        gauge!("recon_verify_business_day", &day).set(1.0);
        if let Some(report) = run.report {
            gauge!("recon_verify_events_checked", &labels).set(report.truth_events as f64);
            for kind in Kind::ALL {
                let n = report
                    .discrepancies_by_kind
                    .get(kind.as_str())
                    .copied()
                    .unwrap_or(0);
                let mut l = labels.to_vec();
                l.push(("check", kind.as_str().to_string()));
                gauge!("recon_verify_discrepancies", &l).set(n as f64);
            }
        }
    });
    handle.render()
}

/// Writes `text` to `path` atomically: `<path>.tmp` beside it (node_exporter reads only
/// `*.prom`), fsync, rename over `path`.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(report: Option<&Report>) -> RunOutcome<'_> {
        RunOutcome {
            job: "payments-eu".into(),
            truth: "postgres".into(),
            business_date: "2025-03-03".into(),
            time_zone: "Europe/London".into(),
            exit_code: if report.is_some() { 1 } else { 2 },
            duration: Duration::from_millis(1500),
            finished_at: chrono::DateTime::from_timestamp(1_741_000_000, 250_000_000).unwrap(),
            report,
        }
    }

    #[test]
    fn a_failed_run_still_says_when_and_how() {
        let text = render(&outcome(None));
        for line in [
            "recon_verify_exit_code{job=\"payments-eu\",truth=\"postgres\"} 2",
            "recon_verify_last_run_timestamp_seconds{job=\"payments-eu\",truth=\"postgres\"} 1741000000.25",
            "recon_verify_duration_seconds{job=\"payments-eu\",truth=\"postgres\"} 1.5",
            "recon_verify_business_day{job=\"payments-eu\",truth=\"postgres\",business_date=\"2025-03-03\",time_zone=\"Europe/London\"} 1",
            "# TYPE recon_verify_exit_code gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(!text.contains("recon_verify_discrepancies{"), "{text}");
        assert!(!text.contains("recon_verify_events_checked{"), "{text}");
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("recon_verify.prom");
        write_textfile(&p, "a 1\n").unwrap();
        write_textfile(&p, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        let e = write_textfile(&dir.path().join("no/such/dir.prom"), "x").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
