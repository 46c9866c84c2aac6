//! One job of a scenario: its configuration (through the fault proxies, or direct for the
//! verifier), its runs of the real `recon-pipeline` binary, and what their logs say.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use crate::services::Endpoints;

/// Where the checkpoint store and the warehouse live.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Both on S3 (through the S3 proxy for the job).
    S3,
    /// Checkpoints in a local directory (e.g. a small tmpfs), warehouse on S3.
    LocalCheckpoints(PathBuf),
    /// Warehouse in a local directory (e.g. a small tmpfs), checkpoints on S3.
    LocalWarehouse(PathBuf),
}

/// Knobs of the job's configuration that scenarios vary.
#[derive(Clone, Debug)]
pub struct JobKnobs {
    /// `checkpoint.interval_ms`.
    pub checkpoint_interval_ms: u64,
    /// `commit.attempts_max`.
    pub commit_attempts_max: u32,
    /// `commit.timeout_ms`.
    pub commit_timeout_ms: u64,
    /// `checkpoint.full_state_every`.
    pub full_state_every: u32,
    /// `commit.every_checkpoints`.
    pub commit_every_checkpoints: u32,
    /// `source.poll_batch_records_max`.
    pub poll_batch_records_max: u32,
    /// A `[state]` section appended to the configuration (bounded state), if any.
    pub state: Option<String>,
}

/// A job: name, topic, and two configurations.
pub struct ChaosJob {
    /// Job id, namespace and topic stem.
    pub name: String,
    /// Kafka topic.
    pub topic: String,
    /// The job's configuration: S3 and the catalog through the proxies.
    pub config: PathBuf,
    /// The same job seen directly (verification, reconciliation).
    pub verify_config: PathBuf,
    /// Directory for logs of this job's runs.
    pub dir: PathBuf,
    binary: PathBuf,
    runs: u32,
}

/// A running (or finished) process of the job.
pub struct Run {
    /// Sequence number within the scenario.
    pub n: u32,
    /// The process.
    pub child: Child,
    /// Its log (stdout + stderr).
    pub log: PathBuf,
    /// When it was spawned.
    pub started: Instant,
    /// Wall-clock spawn time (for comparing with log timestamps).
    pub started_at: SystemTime,
    /// Exit status once reaped.
    pub status: Option<ExitStatus>,
}

/// One line of a JSON log.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Timestamp.
    pub at: DateTime<Utc>,
    /// `fields.message`.
    pub message: String,
    /// `fields`.
    pub fields: serde_json::Value,
    /// The whole line.
    pub raw: String,
}

impl ChaosJob {
    /// Writes both configurations.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: &Path,
        name: &str,
        binary: &Path,
        ep: &Endpoints,
        s3_proxy: u16,
        pg_proxy: u16,
        storage: &Storage,
        knobs: &JobKnobs,
    ) -> anyhow::Result<ChaosJob> {
        std::fs::create_dir_all(dir)?;
        let topic = format!("{name}.events");
        let write = |file: &str, s3_port: u16, pg_port: u16| -> anyhow::Result<PathBuf> {
            let path = dir.join(file);
            std::fs::write(
                &path,
                config_toml(name, &topic, ep, s3_port, pg_port, storage, knobs),
            )?;
            Ok(path)
        };
        Ok(ChaosJob {
            name: name.to_string(),
            config: write("recon.toml", s3_proxy, pg_proxy)?,
            verify_config: write("verify.toml", ep.s3_port, ep.pg_port)?,
            topic,
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            runs: 0,
        })
    }

    /// Starts `recon-pipeline run`; `idle_exit_ms` None runs until stopped.
    pub fn spawn(
        &mut self,
        idle_exit_ms: Option<u64>,
        env: &[(&str, String)],
    ) -> anyhow::Result<Run> {
        self.spawn_with(&[], idle_exit_ms, env)
    }

    /// Starts `recon-pipeline run` with extra arguments (e.g. `--role worker`).
    pub fn spawn_with(
        &mut self,
        args: &[&str],
        idle_exit_ms: Option<u64>,
        env: &[(&str, String)],
    ) -> anyhow::Result<Run> {
        self.runs += 1;
        let n = self.runs;
        let log = self.dir.join(format!("run{n:03}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(["run", "--config"]).arg(&self.config);
        if let Some(ms) = idle_exit_ms {
            cmd.args(["--exit-when-idle-ms", &ms.to_string()]);
        }
        cmd.args(args);
        cmd.env("RUST_LOG", "warn,recon_pipeline=info")
            .env("RECON_LOG_FORMAT", "json")
            .env_remove("RECON_CRASH_AT")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        Ok(Run {
            n,
            child,
            log,
            started: Instant::now(),
            started_at: SystemTime::now(),
            status: None,
        })
    }

    /// Another job id on the same namespace, topic, checkpoint store and warehouse (what an
    /// operator following "start under a new job_id" would do); its runs log to `dir`.
    pub fn with_job_id(&self, job_id: &str, dir: &Path) -> anyhow::Result<ChaosJob> {
        std::fs::create_dir_all(dir)?;
        let rewrite = |from: &Path, file: &str| -> anyhow::Result<PathBuf> {
            let text = std::fs::read_to_string(from)?;
            let old = format!("job_id = \"{}\"\n", self.name);
            anyhow::ensure!(
                text.starts_with(&old),
                "unexpected configuration {}",
                from.display()
            );
            let path = dir.join(file);
            std::fs::write(
                &path,
                text.replacen(&old, &format!("job_id = \"{job_id}\"\n"), 1),
            )?;
            Ok(path)
        };
        Ok(ChaosJob {
            name: job_id.to_string(),
            topic: self.topic.clone(),
            config: rewrite(&self.config, "recon.toml")?,
            verify_config: rewrite(&self.verify_config, "verify.toml")?,
            dir: dir.to_path_buf(),
            binary: self.binary.clone(),
            runs: 0,
        })
    }

    /// Runs of this job so far.
    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// Runs an operator command of the binary against the job's configuration (e.g. `rewind`),
    /// polling for its exit with a deadline; returns its status and output.
    pub fn operator(
        &self,
        args: &[&str],
        deadline: Duration,
    ) -> anyhow::Result<(ExitStatus, String)> {
        self.operator_env(args, &[], deadline)
    }

    /// [`Job::operator`] with more environment (e.g. `RECON_CRASH_AT`).
    pub fn operator_env(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        deadline: Duration,
    ) -> anyhow::Result<(ExitStatus, String)> {
        let log = self.dir.join(format!(
            "operator-{}.log",
            args.first().copied().unwrap_or("cmd")
        ));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut child = Command::new(&self.binary)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RECON_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()?;
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok((s, std::fs::read_to_string(&log).unwrap_or_default()));
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "`recon-pipeline {}` did not exit within {deadline:?}",
                    args.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the binary has an operator subcommand (`recon-pipeline <name> --help` succeeds).
    pub fn has_subcommand(&self, name: &str) -> bool {
        Command::new(&self.binary)
            .args([name, "--help"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

fn config_toml(
    name: &str,
    topic: &str,
    ep: &Endpoints,
    s3_port: u16,
    pg_port: u16,
    storage: &Storage,
    k: &JobKnobs,
) -> String {
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let (warehouse, store) = match storage {
        Storage::S3 => (
            format!("s3://{}/{name}", ep.warehouse_bucket),
            format!("s3://{}/{name}", ep.checkpoint_bucket),
        ),
        Storage::LocalCheckpoints(d) => (
            format!("s3://{}/{name}", ep.warehouse_bucket),
            d.join(name).display().to_string(),
        ),
        Storage::LocalWarehouse(d) => (
            format!("file://{}", d.join(name).display()),
            format!("s3://{}/{name}", ep.checkpoint_bucket),
        ),
    };
    format!(
        r#"job_id = "{name}"

[source]
brokers = "{brokers}"
topic = "{topic}"
poll_batch_records_max = {poll}

[catalog]
uri = "{catalog}"
warehouse = "{warehouse}"
namespace = "{name}"

[catalog.properties]
"s3.endpoint" = "{endpoint}"
"s3.access-key-id" = "{key}"
"s3.secret-access-key" = "{secret}"
"s3.region" = "{region}"
"s3.path-style-access" = "true"
"s3.disable-config-load" = "true"
"s3.disable-ec2-metadata" = "true"

[checkpoint]
store = "{store}"
interval_ms = {interval}
full_state_every = {full}

[checkpoint.store_options]
aws_endpoint = "{endpoint}"
aws_allow_http = "true"
aws_access_key_id = "{key}"
aws_secret_access_key = "{secret}"
aws_region = "{region}"
aws_virtual_hosted_style_request = "false"

[commit]
every_checkpoints = {every}
attempts_max = {attempts}
timeout_ms = {timeout}
"#,
        brokers = ep.kafka,
        poll = k.poll_batch_records_max,
        catalog = ep.catalog_url(pg_port),
        key = ep.s3_key,
        secret = ep.s3_secret,
        region = ep.s3_region,
        interval = k.checkpoint_interval_ms,
        full = k.full_state_every,
        every = k.commit_every_checkpoints,
        attempts = k.commit_attempts_max,
        timeout = k.commit_timeout_ms,
    ) + k.state.as_deref().unwrap_or_default()
}

impl Run {
    /// Process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reaps the process if it exited.
    pub fn poll(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.poll(), Ok(None))
    }

    /// Waits for the exit, polling, at most `deadline`; kills the process and fails after it.
    pub fn wait(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.poll()? {
                return Ok(s);
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                let s = self.child.wait()?;
                self.status = Some(s);
                bail!(
                    "run {} did not exit within {deadline:?} (killed); last log lines:\n{}",
                    self.n,
                    self.tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.poll()? {
            return Ok(s);
        }
        let _ = self.child.kill();
        let s = self.child.wait()?;
        self.status = Some(s);
        Ok(s)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) -> anyhow::Result<()> {
        crate::services::signal(self.pid(), sig)
    }

    /// The whole log.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The JSON lines of the log.
    pub fn lines(&self) -> Vec<LogLine> {
        parse_lines(&self.text())
    }

    /// Log lines with `message` at or after `since`.
    pub fn find(&self, message: &str, since: DateTime<Utc>) -> Vec<LogLine> {
        self.lines()
            .into_iter()
            .filter(|l| l.message == message && l.at >= since)
            .collect()
    }

    /// Polls the log until `count` lines with `message` (at or after `since`) exist; fails when
    /// the process exits first or `deadline` passes.
    pub fn wait_for(
        &mut self,
        message: &str,
        count: usize,
        since: DateTime<Utc>,
        deadline: Duration,
    ) -> anyhow::Result<LogLine> {
        let start = Instant::now();
        loop {
            let found = self.find(message, since);
            if found.len() >= count {
                return Ok(found[count - 1].clone());
            }
            if let Some(s) = self.poll()? {
                bail!(
                    "run {} exited ({s}) before logging {count}× {message:?}; last lines:\n{}",
                    self.n,
                    self.tail(20)
                );
            }
            if start.elapsed() > deadline {
                bail!(
                    "run {} did not log {count}× {message:?} within {deadline:?}; last lines:\n{}",
                    self.n,
                    self.tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The error line the binary prints before a non-zero exit (`recon-pipeline: error: ...`).
    pub fn error_message(&self) -> Option<String> {
        self.text()
            .lines()
            .rev()
            .find(|l| l.starts_with("recon-pipeline: error:"))
            .map(|l| {
                l.trim_start_matches("recon-pipeline: error:")
                    .trim()
                    .to_string()
            })
    }
}

impl LogLine {
    /// A numeric field.
    pub fn num(&self, name: &str) -> Option<u64> {
        let v = self.fields.get(name)?;
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    }
}

impl Drop for Run {
    /// A run is never left behind: a scenario that ends early (failure, harness error) kills it.
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses tracing-subscriber JSON lines; other lines are skipped.
pub fn parse_lines(text: &str) -> Vec<LogLine> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let at = v
                .get("timestamp")?
                .as_str()?
                .parse::<DateTime<Utc>>()
                .ok()?;
            let fields = v.get("fields").cloned().unwrap_or_default();
            let message = fields
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string();
            Some(LogLine {
                at,
                message,
                fields,
                raw: l.to_string(),
            })
        })
        .collect()
}

/// Reads a file from `offset`, returning the new bytes and the new offset.
pub fn read_from(path: &Path, offset: u64) -> (String, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), offset);
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return (String::new(), offset);
    }
    let mut s = String::new();
    let n = f.read_to_string(&mut s).unwrap_or(0) as u64;
    (s, offset + n)
}

/// Locates the `recon-pipeline` binary built beside this program (a test binary lives one level
/// deeper, in `deps/`), or `RECON_CHAOS_PIPELINE_BIN`.
pub fn pipeline_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("RECON_CHAOS_PIPELINE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join("recon-pipeline");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build -p recon-pipeline{}) or set RECON_CHAOS_PIPELINE_BIN",
            bin.display(),
            if dir.ends_with("release") {
                " --release"
            } else {
                ""
            }
        );
    }
    Ok(bin)
}
