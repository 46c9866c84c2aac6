//! `batch-verify`: the nightly end-of-day proof. Exit codes are the contract with alerting:
//! 0 clean, 1 discrepancies found, 2 could not verify (the reason is printed and, with
//! `--report`, written as `status: "error"`), 3 an empty day (nothing in the truth nor the
//! lakehouse; 0 with `--allow-empty`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use batch_verify::history::PastRun;
use batch_verify::options::{Options, TruthSpec};
use batch_verify::report::{Report, Status};
use batch_verify::truth::kafka::KafkaScan;
use batch_verify::truth::postgres::{EVENTS_QUERY, REJECTS_QUERY, scoped_queries};
use batch_verify::{BusinessDay, verify};
use chrono::NaiveDate;
use clap::{Parser, ValueEnum};
use recon_common::config::Config;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Truth {
    Kafka,
    Postgres,
    Files,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Window {
    Timestamps,
    Full,
}

/// Prove, for one business day, that the lakehouse holds every event exactly once and every
/// trip's balance equals the fold of its events. Exit 0 clean, 1 discrepancies, 2 could not verify,
/// 3 nothing to verify (an empty day; 0 with --allow-empty).
#[derive(Parser, Debug)]
#[command(name = "batch-verify", version)]
struct Cli {
    /// The pipeline's configuration (TOML; `RECON__SECTION__KEY` environment overrides apply).
    #[arg(long)]
    config: PathBuf,
    /// The business day, YYYY-MM-DD.
    #[arg(long)]
    date: NaiveDate,
    /// IANA time zone the business day is taken in.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Source of truth.
    #[arg(long, value_enum)]
    truth: Truth,
    /// PostgreSQL URL (`--truth postgres`) or files location: directory, file:// or s3:// URL (`--truth files`).
    /// The environment variable keeps a database password off the command line; `--help` never shows its value.
    #[arg(long, env = "BATCH_VERIFY_TRUTH_URL", hide_env_values = true)]
    truth_url: Option<String>,
    /// Events query for `--truth postgres` ($1, $2 = the day's UTC window as RFC 3339 text).
    #[arg(long, default_value = EVENTS_QUERY)]
    truth_events_query: String,
    /// Dead-letters query for `--truth postgres`.
    #[arg(long, default_value = REJECTS_QUERY)]
    truth_rejects_query: String,
    /// `--truth postgres` with the default queries: read only this generator run's rows
    /// (`truth_runs.run_id`) of a truth database that several runs share.
    #[arg(long)]
    truth_run_id: Option<String>,
    /// Where the Kafka truth starts reading each partition; it always reads to the log end and
    /// selects the day by the business time in each record. `full`: the log start (no
    /// assumption). `timestamps`: the first record stamped at or after the day's start minus the
    /// margin (assumes no producer stamps a record more than the margin before its occurred_at).
    #[arg(long, value_enum, default_value = "full")]
    kafka_window: Window,
    /// Exit 0 (not 3) when the day has nothing in the truth and nothing in the lakehouse.
    #[arg(long)]
    allow_empty: bool,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write a self-contained HTML page here: verdict, counts, findings with their keys, the
    /// day's totals as a chart, and the newest runs from verification_runs.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Write the run's Prometheus metrics here (node_exporter textfile collector, e.g.
    /// /var/lib/node_exporter/textfile/recon_verify.prom), replaced atomically on every run,
    /// also when it could not verify.
    #[arg(long)]
    metrics_textfile: Option<PathBuf>,
    /// Safety margin around the day, in minutes (Kafka window, dead-letter scan).
    #[arg(long, default_value_t = 60)]
    margin_minutes: u64,
    /// Days either side searched for the events of trips that cross the day.
    #[arg(long, default_value_t = 2)]
    trip_span_days: u32,
    /// Spill buckets (memory is about rows / buckets).
    #[arg(long, default_value_t = 64)]
    buckets: usize,
    /// Directory for spill files (default: the system temporary directory).
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Threads checking buckets (default: the CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Discrepancies kept in the report and the table (all are counted).
    #[arg(long, default_value_t = 100_000)]
    discrepancies_max: usize,
    /// Most time reading Kafka may take, in seconds.
    #[arg(long, default_value_t = 3600)]
    kafka_timeout_s: u64,
    /// Most truth records read.
    #[arg(long, default_value_t = 2_000_000_000)]
    truth_records_max: u64,
    /// Most trips re-checked with neighbouring days.
    #[arg(long, default_value_t = 1_000_000)]
    incomplete_trips_max: usize,
    /// Do not append the run to verification_runs / verification_discrepancies.
    #[arg(long)]
    no_record: bool,
    /// Never draw a progress bar (hidden anyway when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
    /// Skip checks (g)/(h) of the job's optional outputs (current balances, alerts topic).
    #[arg(long)]
    skip_outputs: bool,
}

fn options(cli: &Cli) -> anyhow::Result<Options> {
    let day = BusinessDay::new(cli.date, &cli.tz)?;
    let url = || {
        cli.truth_url
            .clone()
            .context("--truth-url is required for this truth source")
    };
    let truth = match cli.truth {
        Truth::Kafka => TruthSpec::Kafka {
            scan: match cli.kafka_window {
                Window::Timestamps => KafkaScan::Timestamps,
                Window::Full => KafkaScan::Full,
            },
        },
        Truth::Postgres => {
            let (events_query, rejects_query) = match &cli.truth_run_id {
                None => (
                    cli.truth_events_query.clone(),
                    cli.truth_rejects_query.clone(),
                ),
                Some(_)
                    if cli.truth_events_query != EVENTS_QUERY
                        || cli.truth_rejects_query != REJECTS_QUERY =>
                {
                    anyhow::bail!(
                        "--truth-run-id narrows the default queries; with your own queries, \
                         filter by run in them instead"
                    )
                }
                Some(id) => scoped_queries(id)?,
            };
            TruthSpec::Postgres {
                url: url()?,
                events_query,
                rejects_query,
            }
        }
        Truth::Files => TruthSpec::Files { url: url()? },
    };
    if cli.truth_run_id.is_some() && !matches!(cli.truth, Truth::Postgres) {
        anyhow::bail!("--truth-run-id applies to --truth postgres only");
    }
    let mut o = Options::new(day, truth);
    o.margin = Duration::from_secs(cli.margin_minutes * 60);
    o.trip_span_days = cli.trip_span_days;
    o.buckets = cli.buckets.clamp(1, 4096);
    o.spill_dir = cli.spill_dir.clone();
    if let Some(t) = cli.threads {
        o.threads = t.max(1);
    }
    o.discrepancies_max = cli.discrepancies_max;
    o.kafka_timeout = Duration::from_secs(cli.kafka_timeout_s);
    o.truth_records_max = cli.truth_records_max;
    o.incomplete_trips_max = cli.incomplete_trips_max;
    o.record = !cli.no_record;
    o.progress = !cli.no_progress;
    o.check_outputs = !cli.skip_outputs;
    Ok(o)
}

/// Runs kept in the HTML page's history.
const HISTORY_RUNS: usize = 30;

async fn run(cli: &Cli) -> anyhow::Result<(Report, Vec<PastRun>)> {
    let cfg = Config::load(Some(&cli.config)).context("loading --config")?;
    let opts = options(cli)?;
    let catalog = recon_common::lakehouse::open_catalog(&cfg)
        .await
        .context("opening the Iceberg catalog")?;
    let started_at = chrono::Utc::now().to_rfc3339();
    match verify(&cfg, catalog.clone(), &opts).await {
        Ok(report) => {
            let history = if cli.html.is_some() {
                history(catalog.as_ref(), &cfg).await
            } else {
                Vec::new()
            };
            Ok((report, history))
        }
        Err(e) => {
            // The failed proof is history too: record it when the catalog still answers.
            if opts.record {
                let run_id = uuid::Uuid::new_v4().to_string();
                let report = Report::error(
                    run_id,
                    &opts.day,
                    opts.truth.name(),
                    started_at,
                    e.to_string(),
                );
                if let Err(r) =
                    batch_verify::record::record_run(catalog.as_ref(), &cfg, &report, &opts).await
                {
                    tracing::warn!(error = %r, "could not record the failed run in verification_runs");
                }
            }
            Err(e.into())
        }
    }
}

/// The newest recorded runs (this one included when it was recorded); none if they cannot be
/// read (the page says so by its empty history; the run's verdict does not depend on it).
async fn history(catalog: &dyn iceberg::Catalog, cfg: &Config) -> Vec<PastRun> {
    let ident = recon_common::lakehouse::table_ident(
        cfg,
        recon_schemas::tables::TableName::VerificationRuns,
    );
    let read = async {
        let table = catalog
            .load_table(&ident)
            .await
            .map_err(|e| e.to_string())?;
        batch_verify::history::newest_runs(&table, HISTORY_RUNS)
            .await
            .map_err(|e| e.to_string())
    };
    read.await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read verification_runs for the HTML history");
        Vec::new()
    })
}

/// The report of a run that could not verify.
fn error_report(cli: &Cli, e: &anyhow::Error) -> serde_json::Value {
    serde_json::json!({
        "status": Status::Error.as_str(),
        "business_date": cli.date.to_string(),
        "time_zone": cli.tz,
        "truth_source": format!("{:?}", cli.truth).to_lowercase(),
        "error": recon_common::redactor::redact_str(&format!("{e:#}")),
    })
}

/// Writes `--metrics-textfile` for a run that ended with `code`.
fn write_metrics(
    cli: &Cli,
    path: &std::path::Path,
    code: i32,
    report: Option<&Report>,
    wall: Duration,
) -> std::io::Result<()> {
    // The job label: the configuration may be the very thing that failed.
    let job = Config::load(Some(&cli.config))
        .map(|c| c.job_id.to_string())
        .unwrap_or_else(|_| "unknown".into());
    let outcome = batch_verify::metrics::RunOutcome {
        job,
        truth: format!("{:?}", cli.truth).to_lowercase(),
        business_date: cli.date.to_string(),
        time_zone: cli.tz.clone(),
        exit_code: code,
        duration: report.map_or(wall, |r| Duration::from_millis(r.elapsed_ms)),
        finished_at: chrono::Utc::now(),
        report,
    };
    batch_verify::metrics::write_textfile(path, &batch_verify::metrics::render(&outcome))
}

/// Whether `path` can be written: an existing directory holds it and a file can be created
/// there. Checked before anything runs, so a run never records a result it cannot report.
fn check_writable(option: &str, path: &std::path::Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if path.is_dir() {
        return Err(format!(
            "{option} {} is a directory; give a file path",
            path.display()
        ));
    }
    if !dir.is_dir() {
        return Err(format!(
            "{option} {}: directory {} does not exist; create it or choose another path",
            path.display(),
            dir.display()
        ));
    }
    tempfile::NamedTempFile::new_in(dir).map(drop).map_err(|e| {
        format!(
            "{option} {}: cannot write in {}: {e}",
            path.display(),
            dir.display()
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = std::time::Instant::now();
    for (option, path) in [
        ("--report", cli.report.as_deref()),
        ("--metrics-textfile", cli.metrics_textfile.as_deref()),
        ("--html", cli.html.as_deref()),
    ] {
        if let Some(path) = path
            && let Err(why) = check_writable(option, path)
        {
            eprintln!("batch-verify: could not verify: {why}; nothing was read or recorded");
            return ExitCode::from(2);
        }
    }
    // Credentials stay out of every line: `recon_common::logging`.
    recon_common::logging::init("human", "warn,batch_verify=info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("batch-verify: could not verify: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(run(&cli));
    let (code, json) = match &outcome {
        Ok((report, _)) => {
            println!("{report}");
            let code = match report.status {
                Status::Empty if cli.allow_empty => 0,
                s => s.exit_code(),
            };
            (code, report.to_json())
        }
        Err(e) => {
            println!(
                "batch-verify {} ({}) against {:?}: COULD NOT VERIFY\n  why: {}",
                cli.date,
                cli.tz,
                cli.truth,
                // Printed outside the log writer: redacted here.
                recon_common::redactor::redact_str(&format!("{e:#}"))
            );
            (
                2,
                serde_json::to_string_pretty(&error_report(&cli, e)).unwrap_or_default(),
            )
        }
    };
    let mut code = code;
    if let Some(path) = &cli.report
        && let Err(e) = batch_verify::metrics::write_textfile(path, &(json + "\n"))
    {
        eprintln!(
            "batch-verify: cannot write the report to {}: {e}",
            path.display()
        );
        code = 2;
    }
    if let Some(path) = &cli.html {
        let page = match &outcome {
            Ok((report, history)) => Some(batch_verify::html::render(report, history)),
            Err(e) => BusinessDay::new(cli.date, &cli.tz).ok().map(|day| {
                let why = recon_common::redactor::redact_str(&format!("{e:#}"));
                let report = Report::error(
                    String::new(),
                    &day,
                    &format!("{:?}", cli.truth).to_lowercase(),
                    chrono::Utc::now().to_rfc3339(),
                    why,
                );
                batch_verify::html::render(&report, &[])
            }),
        };
        if let Some(page) = page
            && let Err(e) = batch_verify::metrics::write_textfile(path, &page)
        {
            eprintln!(
                "batch-verify: cannot write the HTML page to {}: {e}",
                path.display()
            );
            code = 2;
        }
    }
    if let Some(path) = &cli.metrics_textfile
        && let Err(e) = write_metrics(
            &cli,
            path,
            code,
            outcome.as_ref().ok().map(|(r, _)| r),
            started.elapsed(),
        )
    {
        eprintln!(
            "batch-verify: cannot write the metrics to {}: {e}; check --metrics-textfile",
            path.display()
        );
        code = 2;
    }
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}
