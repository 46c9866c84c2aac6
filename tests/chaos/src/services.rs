//! The services a chaos run works against, and the handles that break them.
//!
//! By default the harness starts a **private** set (Kafka, PostgreSQL, S3) with the project's own
//! `infra/local/up`, on free ports and in a fresh state directory (`RECON_STATE_DIR` and the
//! `RECON_LOCAL_*_PORT` overrides that `infra/local/lib.sh` documents), so that stopping the broker or
//! restarting PostgreSQL never disturbs anybody else's tests on the shared set. `Drop` stops it with
//! `infra/local/down --purge`.
//!
//! With [`ServiceMode::Env`] the addresses come from `infra/local/env` and nothing is stopped or
//! restarted: broker and PostgreSQL faults are then not drawn (catalog faults still happen in the
//! harness's own PostgreSQL proxy).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// Where the services come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceMode {
    /// A private set started (and stopped) by the harness: every fault kind is available.
    Private,
    /// The set described by `infra/local/env` (`RECON_*` variables): no broker / PostgreSQL stops.
    Env,
}

/// Addresses and credentials of one service set.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Kafka bootstrap, `127.0.0.1:PORT`.
    pub kafka: String,
    /// PostgreSQL host port.
    pub pg_port: u16,
    /// S3 endpoint port.
    pub s3_port: u16,
    /// S3 access key id.
    pub s3_key: String,
    /// S3 secret.
    pub s3_secret: String,
    /// S3 region.
    pub s3_region: String,
    /// Warehouse bucket.
    pub warehouse_bucket: String,
    /// Checkpoint bucket.
    pub checkpoint_bucket: String,
}

impl Endpoints {
    /// The catalog database URL on `port` (the real server or a proxy in front of it).
    pub fn catalog_url(&self, port: u16) -> String {
        format!("postgres://recon:recon@127.0.0.1:{port}/recon_catalog")
    }
}

/// A running service set.
pub struct ServiceSet {
    /// How it was obtained.
    pub mode: ServiceMode,
    /// Addresses.
    pub endpoints: Endpoints,
    root: PathBuf,
    state_dir: Option<PathBuf>,
    /// Kafka, controller, PostgreSQL, S3, Kafka SASL_PLAINTEXT, Kafka SASL_SSL.
    ports: [u16; 6],
    keep: bool,
}

/// Finds `n` distinct free TCP ports on loopback (bound then released: a small race, retried by `up`'s
/// own "port in use" check failing loudly).
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut listeners = Vec::new();
    let mut ports = [0u16; N];
    for p in &mut ports {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
        *p = l.local_addr()?.port();
        listeners.push(l);
    }
    Ok(ports)
}

/// The repository root (this crate lives in `<root>/tests/chaos`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/chaos is two levels below the repository root")
        .to_path_buf()
}

impl ServiceSet {
    /// Starts a private set under `base` (a directory made for this run).
    pub fn start_private(base: &Path, keep: bool) -> anyhow::Result<ServiceSet> {
        let root = repo_root();
        let state_dir = base.join("services");
        std::fs::create_dir_all(&state_dir)?;
        // PostgreSQL runs as `postgres`: every directory above its data must be traversable.
        for dir in state_dir.ancestors() {
            if dir == Path::new("/") || dir == Path::new("/tmp") {
                break;
            }
            set_mode(dir, 0o755)?;
        }
        let ports = free_ports::<6>()?;
        let set = ServiceSet {
            mode: ServiceMode::Private,
            endpoints: Endpoints {
                kafka: format!("127.0.0.1:{}", ports[0]),
                pg_port: ports[2],
                s3_port: ports[3],
                s3_key: "recon-access-key".into(),
                s3_secret: "recon-secret-key".into(),
                s3_region: "us-east-1".into(),
                warehouse_bucket: "recon-warehouse".into(),
                checkpoint_bucket: "recon-checkpoints".into(),
            },
            root,
            state_dir: Some(state_dir),
            ports,
            keep,
        };
        let t = Instant::now();
        set.infra("up", &[])
            .context("starting the private service set")?;
        eprintln!(
            "chaos: private services up in {:.1}s (kafka {}, postgres {}, s3 {})",
            t.elapsed().as_secs_f64(),
            set.endpoints.kafka,
            set.endpoints.pg_port,
            set.endpoints.s3_port
        );
        Ok(set)
    }

    /// The set `infra/local/env` describes.
    pub fn from_env() -> anyhow::Result<ServiceSet> {
        let var = |k: &str| {
            std::env::var(k)
                .with_context(|| format!("{k} is not set (eval \"$(infra/local/env)\")"))
        };
        let port_of = |url: &str| -> anyhow::Result<u16> {
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            let hostport = rest.rsplit('@').next().unwrap_or(rest);
            let hostport = hostport
                .split('/')
                .find(|s| s.contains(':'))
                .unwrap_or(hostport);
            hostport
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("no port in {url}"))
        };
        let s3 = var("RECON_S3_ENDPOINT")?;
        Ok(ServiceSet {
            mode: ServiceMode::Env,
            endpoints: Endpoints {
                kafka: var("RECON_KAFKA_BOOTSTRAP")?,
                pg_port: port_of(&var("RECON_PG_CATALOG_URL")?)?,
                s3_port: port_of(&s3)?,
                s3_key: var("RECON_S3_ACCESS_KEY_ID")?,
                s3_secret: var("RECON_S3_SECRET_ACCESS_KEY")?,
                s3_region: var("RECON_S3_REGION")?,
                warehouse_bucket: var("RECON_S3_WAREHOUSE_BUCKET")?,
                checkpoint_bucket: var("RECON_S3_CHECKPOINT_BUCKET")?,
            },
            root: repo_root(),
            state_dir: None,
            ports: [0; 6],
            keep: true,
        })
    }

    /// Whether the broker and PostgreSQL may be stopped and restarted.
    pub fn controllable(&self) -> bool {
        self.mode == ServiceMode::Private
    }

    fn infra(&self, script: &str, args: &[&str]) -> anyhow::Result<()> {
        let state = self
            .state_dir
            .as_ref()
            .context("not a private service set")?;
        let out = Command::new("bash")
            .arg(self.root.join("infra/local").join(script))
            .args(args)
            .env("RECON_STATE_DIR", state)
            .env("RECON_LOCAL_KAFKA_PORT", self.ports[0].to_string())
            .env(
                "RECON_LOCAL_KAFKA_CONTROLLER_PORT",
                self.ports[1].to_string(),
            )
            .env("RECON_LOCAL_PG_PORT", self.ports[2].to_string())
            .env("RECON_LOCAL_S3_PORT", self.ports[3].to_string())
            .env("RECON_LOCAL_KAFKA_SASL_PORT", self.ports[4].to_string())
            .env("RECON_LOCAL_KAFKA_SASL_SSL_PORT", self.ports[5].to_string())
            .env("RECON_KAFKA_HEAP", "768m")
            .env("RECON_SKIP_INSTALL", "1")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running infra/local/{script}"))?;
        if !out.status.success() {
            bail!(
                "infra/local/{script} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn state(&self) -> anyhow::Result<&Path> {
        ensure!(
            self.controllable(),
            "services from the environment are never stopped by the harness"
        );
        Ok(self
            .state_dir
            .as_deref()
            .expect("private set has a state dir"))
    }

    fn kafka_pid(&self) -> anyhow::Result<i32> {
        let f = self.state()?.join("kafka.pid");
        let pid =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        pid.trim()
            .parse()
            .with_context(|| format!("pid in {}", f.display()))
    }

    /// Stops the Kafka broker: SIGTERM (controlled shutdown) or SIGKILL (crash), and waits until the
    /// process is gone.
    pub fn kafka_stop(&self, hard: bool) -> anyhow::Result<()> {
        let pid = self.kafka_pid()?;
        signal(pid, if hard { libc::SIGKILL } else { libc::SIGTERM })?;
        wait_gone(pid, Duration::from_secs(90)).context("the Kafka broker did not stop")?;
        Ok(())
    }

    /// Starts whatever is not running (the broker after [`ServiceSet::kafka_stop`]) and waits until
    /// it answers (`infra/local/up` is idempotent and bounded).
    pub fn ensure_up(&self) -> anyhow::Result<()> {
        self.state()?;
        self.infra("up", &[])
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let state = self.state()?;
        let data = std::fs::read_to_string(state.join("postgres.datadir"))?;
        let data = data.trim();
        let log = Path::new(data)
            .parent()
            .expect("data dir has a parent")
            .join("postgres.log");
        let bin = pg_bindir()?;
        let out = Command::new("runuser")
            .current_dir("/")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .args(["-D", data, "-l"])
            .arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl")?;
        if !out.status.success() {
            bail!(
                "pg_ctl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Restarts PostgreSQL: `fast` (clients disconnected, clean shutdown) or `immediate` (crash
    /// and recovery). Returns when it accepts connections again.
    pub fn pg_restart(&self, immediate: bool) -> anyhow::Result<()> {
        let m = if immediate { "immediate" } else { "fast" };
        self.pg_ctl(&["-m", m, "-w", "-t", "60", "restart"])
    }

    /// Stops PostgreSQL (fast).
    pub fn pg_stop(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"])
    }

    /// Starts PostgreSQL and waits for it.
    pub fn pg_start(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "start"])
    }
}

impl Drop for ServiceSet {
    fn drop(&mut self) {
        if self.mode != ServiceMode::Private {
            return;
        }
        if self.keep {
            eprintln!(
                "chaos: leaving the private services running (state {})",
                self.state_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            );
            return;
        }
        if let Err(e) = self.infra("down", &["--purge"]) {
            eprintln!("chaos: stopping the private services failed: {e:#}");
        }
    }
}

fn pg_bindir() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql (run infra/local/install)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .context("no PostgreSQL server under /usr/lib/postgresql/*/bin")
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a pid we started and a constant signal has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    ensure!(
        rc == 0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Whether `pid` names a live process (a zombie child counts as gone once reaped by its parent).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 {
        return false;
    }
    // A process that exited but is not reaped yet is a zombie: gone for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Polls until `pid` is gone or `deadline` passes.
pub fn wait_gone(pid: i32, deadline: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while alive(pid) {
        ensure!(
            start.elapsed() < deadline,
            "pid {pid} still alive after {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
