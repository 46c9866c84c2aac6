//! Running the real `recon-pipeline` binary against the local services, for crash tests.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::Services;

/// Locates the `recon-pipeline` binary of this workspace build, building it if missing.
///
/// `RECON_PIPELINE_BIN` names another build to test instead (a release binary, or a copy taken
/// while several worktrees share one target directory).
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os(ENV_PIPELINE_BIN) {
        return PathBuf::from(bin);
    }
    workspace_binary("recon-pipeline")
}

/// `target/<profile>/<package>` of this build (the binary of that name), built if missing.
/// A binary older than one of its sources (`cargo test -p recon-tests` alone does not rebuild
/// the other packages' binaries) is refused with the command that rebuilds it: a test that ran
/// the previous build would prove nothing about the code under test.
pub fn workspace_binary(package: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> -> target/<profile>/<package>
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = profile_dir.join(package);
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", package])
            .status()
            .unwrap_or_else(|e| panic!("cargo build {package}: {e}"));
        assert!(status.success(), "building {package} failed");
    }
    assert!(bin.exists(), "{} not found after build", bin.display());
    if let Some(source) = newer_source(&bin) {
        panic!(
            "{} is older than its source {}: rebuild it (cargo build -p {package}, or run \
             cargo test --workspace) or name a build with its RECON_*_BIN variable",
            bin.display(),
            source.display()
        );
    }
    bin
}

/// A source file of `bin` (from cargo's dep-info `<bin>.d`) modified after `bin` was built.
fn newer_source(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let deps = std::fs::read_to_string(bin.with_extension("d")).ok()?;
    let (_, sources) = deps.lines().next()?.split_once(": ")?;
    // Paths are space-separated, a space inside one escaped as "\ ".
    let escaped = sources.replace("\\ ", "\u{0}");
    escaped
        .split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(p.replace('\u{0}', " ")))
        .find(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
        })
}

/// Environment variable naming the `recon-pipeline` binary the tests run (default: this build's).
pub const ENV_PIPELINE_BIN: &str = "RECON_PIPELINE_BIN";

/// A job configuration on the real services, isolated by `name` (topic, namespace, buckets' prefixes).
pub struct JobSetup {
    /// Unique name of this test's job, topic and namespace.
    pub name: String,
    /// Kafka topic.
    pub topic: String,
    /// The config file.
    pub config: PathBuf,
    /// Keeps the config directory alive.
    pub _dir: tempfile::TempDir,
}

impl JobSetup {
    /// Writes a config for a job reading `topic`, with the PostgreSQL catalog and S3 warehouse and checkpoints.
    pub fn new(s: &Services, prefix: &str, checkpoint_interval_ms: u64) -> JobSetup {
        let name = crate::unique_name(prefix);
        let topic = format!("{name}.events");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("recon.toml");
        let s3 = &s.s3;
        let toml = format!(
            r#"job_id = "{name}"

[source]
brokers = "{brokers}"
topic = "{topic}"
poll_batch_records_max = 500

[catalog]
uri = "{catalog}"
warehouse = "s3://{wh}/{name}"
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
store = "s3://{ck}/{name}"
interval_ms = {checkpoint_interval_ms}

[checkpoint.store_options]
aws_endpoint = "{endpoint}"
aws_allow_http = "true"
aws_access_key_id = "{key}"
aws_secret_access_key = "{secret}"
aws_region = "{region}"
aws_virtual_hosted_style_request = "false"
"#,
            brokers = s.kafka_bootstrap,
            catalog = s.pg_catalog_url,
            wh = s3.warehouse_bucket,
            ck = s3.checkpoint_bucket,
            endpoint = s3.endpoint,
            key = s3.access_key_id,
            secret = s3.secret_access_key,
            region = s3.region,
        );
        std::fs::write(&config, toml).expect("write config");
        JobSetup {
            name,
            topic,
            config,
            _dir: dir,
        }
    }

    /// Starts `recon-pipeline run` with extra environment; output goes to `log` (a file, so a
    /// chatty child never blocks on a full pipe).
    pub fn spawn(
        &self,
        idle_exit_ms: u64,
        env: &[(&str, String)],
        log: &Path,
    ) -> std::process::Child {
        let idle = idle_exit_ms.to_string();
        self.spawn_with(&["--exit-when-idle-ms", &idle], env, log)
    }
}

impl JobSetup {
    /// Starts `recon-pipeline run --config <config>` with `args` after it (e.g. `--role
    /// worker`) and extra environment; output goes to `log`.
    pub fn spawn_with(
        &self,
        args: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> std::process::Child {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(binary());
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn,recon_pipeline=info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn recon-pipeline")
    }

    /// Runs `recon-pipeline <command> --config <config> <args>` to its end (an operator
    /// command: `accept-topic-reset`, `rewind`...); returns success and stdout + stderr.
    pub fn operate(&self, command: &str, args: &[&str]) -> (bool, String) {
        self.operate_with(command, args, &[])
    }

    /// [`JobSetup::operate`] with more environment (e.g. `RECON_CRASH_AT`).
    pub fn operate_with(
        &self,
        command: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (bool, String) {
        let out = Command::new(binary())
            .args([command, "--config"])
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn,recon_pipeline=info")
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("run recon-pipeline {command}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Appends `text` (a TOML section) to the configuration file.
    pub fn append_config(&self, text: &str) {
        let mut toml = std::fs::read_to_string(&self.config).expect("read config");
        toml.push('\n');
        toml.push_str(text);
        std::fs::write(&self.config, toml).expect("write config");
    }
}

/// Waits for a child with a deadline (polling its status); kills it and panics when the
/// deadline passes. Returns the status and the log.
pub fn wait_with_deadline(
    mut child: std::process::Child,
    log: &Path,
    deadline: Duration,
) -> (ExitStatus, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status, std::fs::read_to_string(log).unwrap_or_default());
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "recon-pipeline did not exit within {deadline:?}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
