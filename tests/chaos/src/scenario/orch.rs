//! The orchestrator of a scenario (keeps one instance of the job running and restarts it when it
//! exits, with backoff), the background publisher that shapes load, and the tmpfs a full-disk
//! fault fills.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use recon_pipeline::generate::Record;

use super::Exit;
use crate::job::{ChaosJob, Run};
use crate::plan::bounded::ColdDirOnRestart;
use crate::traffic;

/// A tmpfs mounted for the scenario, unmounted on drop.
pub(super) struct Tmpfs(pub(super) PathBuf);

impl Tmpfs {
    pub(super) fn mount(dir: &Path, size_mb: u32) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir)
            .output()?;
        ensure!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Fills the file system until ENOSPC; returns bytes written.
    pub(super) fn fill(&self) -> anyhow::Result<u64> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("ballast"))?;
        let block = vec![0xAAu8; 64 * 1024];
        let mut n = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Tail bytes too, so not even a small manifest fits.
        let _ = f.write_all(&[0u8; 4096]);
        let _ = f.sync_all();
        Ok(n)
    }

    pub(super) fn free(&self) -> anyhow::Result<()> {
        std::fs::remove_file(self.0.join("ballast"))?;
        Ok(())
    }
}

/// Whether mounting a tmpfs works here (root, and mounts permitted).
pub fn tmpfs_available(work: &Path) -> bool {
    let probe = work.join("tmpfs-probe");
    match Tmpfs::mount(&probe, 1) {
        Ok(t) => {
            drop(t);
            true
        }
        Err(_) => false,
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

/// The orchestrator: keeps one instance of the job running, restarting it when it exits.
pub(super) struct Orch {
    pub(super) job: ChaosJob,
    pub(super) current: Option<Run>,
    /// Runs that ended (kept for their logs).
    pub(super) ended: Vec<Run>,
    pub(super) exits: Vec<Exit>,
    pub(super) restarts: u32,
    /// A SIGTERM or SIGKILL the harness sent to the current run (so its exit is expected).
    pub(super) expected_end: Option<&'static str>,
    pub(super) during: String,
    pub(super) last_spawn: Option<Instant>,
    pub(super) backoff: Duration,
    /// Bounded state on: the job's local cold directory, wiped or kept before each restart.
    pub(super) cold: Option<ColdDir>,
}

/// The job's local working copy of the cold runs, and what restarts did to it.
pub(super) struct ColdDir {
    pub(super) dir: PathBuf,
    pub(super) policy: ColdDirOnRestart,
    spawns: u32,
    /// Restarts that found the directory deleted (a new machine).
    pub(super) wiped: u32,
    /// ... of which it held at least one run (so the start had to download).
    pub(super) wiped_with_runs: u32,
    /// Restarts that found the directory as the previous run left it.
    pub(super) kept: u32,
}

impl ColdDir {
    pub(super) fn new(dir: PathBuf, policy: ColdDirOnRestart) -> ColdDir {
        ColdDir {
            dir,
            policy,
            spawns: 0,
            wiped: 0,
            wiped_with_runs: 0,
            kept: 0,
        }
    }

    /// Before a spawn: the first start finds nothing; each restart wipes or keeps.
    fn before_spawn(&mut self) -> anyhow::Result<()> {
        self.spawns += 1;
        if self.spawns == 1 {
            return Ok(());
        }
        let wipe = match self.policy {
            ColdDirOnRestart::Kept => false,
            ColdDirOnRestart::Wiped => true,
            ColdDirOnRestart::Alternate => self.spawns.is_multiple_of(2),
        };
        if !wipe {
            self.kept += 1;
            return Ok(());
        }
        let runs = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "run"))
                    .count()
            })
            .unwrap_or(0);
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("wiping the cold dir {}: {e}", self.dir.display()),
        }
        self.wiped += 1;
        if runs > 0 {
            self.wiped_with_runs += 1;
        }
        Ok(())
    }
}

pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

impl Orch {
    pub(super) fn spawn(&mut self, env: &[(&str, String)]) -> anyhow::Result<()> {
        ensure!(self.current.is_none(), "a run is already current");
        if let Some(c) = self.cold.as_mut() {
            c.before_spawn()?;
        }
        let run = self.job.spawn(None, env)?;
        self.current = Some(run);
        self.expected_end = None;
        self.last_spawn = Some(Instant::now());
        Ok(())
    }

    pub(super) fn cur(&mut self) -> anyhow::Result<&mut Run> {
        self.current.as_mut().context("no current run")
    }

    /// Records the current run's exit if it ended; returns whether it did.
    pub(super) fn reap(&mut self) -> anyhow::Result<bool> {
        let Some(run) = self.current.as_mut() else {
            return Ok(false);
        };
        let Some(status) = run.poll()? else {
            return Ok(false);
        };
        let run = self.current.take().expect("current");
        self.record_exit(&run, status, self.expected_end);
        self.ended.push(run);
        Ok(true)
    }

    pub(super) fn record_exit(
        &mut self,
        run: &Run,
        status: std::process::ExitStatus,
        expected: Option<&'static str>,
    ) {
        let message = run.error_message();
        let class = if status.signal().is_some() {
            "killed"
        } else if status.success() {
            "clean"
        } else if message.is_some() {
            "loud"
        } else {
            "silent"
        };
        self.exits.push(Exit {
            run: run.n,
            class,
            status: match (status.code(), status.signal()) {
                (Some(c), _) => format!("exit {c}"),
                (_, Some(s)) => format!("signal {s}"),
                _ => status.to_string(),
            },
            message,
            during: match expected {
                Some(e) => format!("{} ({e})", self.during),
                None => self.during.clone(),
            },
        });
    }

    /// Restart when the current run ended (with backoff after quick failures). Returns true when
    /// a run is current and alive.
    pub(super) fn supervise(&mut self) -> anyhow::Result<bool> {
        self.reap()?;
        if self.current.is_some() {
            return Ok(true);
        }
        let quick = self
            .last_spawn
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
        if let Some(t) = self.last_spawn
            && quick
            && t.elapsed() < self.backoff
        {
            return Ok(false);
        }
        self.backoff = if quick {
            (self.backoff * 2).min(BACKOFF_MAX)
        } else {
            BACKOFF_MIN
        };
        self.restarts += 1;
        self.spawn(&[])?;
        Ok(true)
    }

    /// Supervises for `d` (an outage window): dead runs are restarted as an orchestrator would.
    pub(super) fn supervise_for(&mut self, d: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.supervise()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits (restarting as needed) until a run completes a checkpoint holding new records at or
    /// after `since`; returns the delay and the restarts it took.
    pub(super) fn wait_recovered(
        &mut self,
        since: DateTime<Utc>,
        deadline: Duration,
    ) -> anyhow::Result<(Duration, u32)> {
        let start = Instant::now();
        let restarts_before = self.restarts;
        loop {
            self.supervise()?;
            if let Some(run) = self.current.as_ref() {
                let hit = run
                    .find("checkpoint complete", since)
                    .into_iter()
                    .find(|l| l.num("records").unwrap_or(0) > 0);
                if let Some(l) = hit {
                    let d = (l.at - since).to_std().unwrap_or_default();
                    return Ok((d, self.restarts - restarts_before));
                }
            }
            if start.elapsed() > deadline {
                let tail = self
                    .current
                    .as_ref()
                    .map(|r| r.tail(25))
                    .unwrap_or_default();
                bail!(
                    "the job did not come back within {deadline:?} after {} ({} restarts); exits: {:?}\nlast lines:\n{tail}",
                    self.during,
                    self.restarts - restarts_before,
                    self.exits.iter().rev().take(3).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM the current run and wait for its exit; returns its status.
    pub(super) fn stop_graceful(
        &mut self,
        deadline: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.reap()?;
        let Some(run) = self.current.as_mut() else {
            bail!("no run to stop");
        };
        // SIGTERM is handled once the job has recovered; before that it kills the process (the
        // default action), which is not what this step tests.
        let epoch = DateTime::<Utc>::from(run.started_at);
        if run
            .wait_for("recovered", 1, epoch, Duration::from_secs(120))
            .is_err()
        {
            // It exited by itself (the caller sees how), or hangs in recovery.
            if let Some(s) = run.poll()? {
                self.reap()?;
                return Ok(s);
            }
            bail!(
                "run {} did not recover within 120 s:\n{}",
                run.n,
                run.tail(20)
            );
        }
        let run = self.current.as_mut().expect("current");
        run.signal(libc::SIGTERM)?;
        self.expected_end = Some("sigterm");
        let status = self.current.as_mut().expect("current").wait(deadline)?;
        self.reap()?;
        Ok(status)
    }

    /// SIGKILL the current run.
    pub(super) fn kill(&mut self) -> anyhow::Result<()> {
        self.expected_end = Some("sigkill");
        if let Some(run) = self.current.as_mut() {
            run.kill()?;
        }
        self.reap()?;
        Ok(())
    }

    pub(super) fn all_runs(&self) -> impl Iterator<Item = &Run> {
        self.ended.iter().chain(self.current.iter())
    }
}

/// A background publisher.
pub(super) struct Publisher(Option<std::thread::JoinHandle<anyhow::Result<()>>>);

impl Publisher {
    /// Publishes `records` in `slices` slices, `pause` apart (load shape, not a wait).
    pub(super) fn start(
        brokers: String,
        topic: String,
        records: Vec<Record>,
        slices: usize,
        pause: Duration,
    ) -> Publisher {
        Publisher(Some(std::thread::spawn(move || {
            let n = records.len();
            let per = n.div_ceil(slices.max(1)).max(1);
            for (i, chunk) in records.chunks(per).enumerate() {
                if i > 0 {
                    std::thread::sleep(pause);
                }
                traffic::publish(&brokers, &topic, chunk, Duration::from_secs(300))?;
            }
            Ok(())
        })))
    }

    pub(super) fn finished(&self) -> bool {
        self.0.as_ref().is_none_or(|h| h.is_finished())
    }

    pub(super) fn join(&mut self) -> anyhow::Result<()> {
        match self.0.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("publisher thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// A supervisor's restart policy as a systemd unit states it (`Restart=`,
/// `RestartPreventExitStatus=`).
pub(super) struct RestartPolicy {
    restart: String,
    prevent: Vec<i32>,
}

impl RestartPolicy {
    /// Reads the policy of a systemd unit file.
    pub(super) fn read(unit: &Path) -> anyhow::Result<RestartPolicy> {
        let text = std::fs::read_to_string(unit)
            .with_context(|| format!("reading the systemd unit {}", unit.display()))?;
        let value = |key: &str| {
            text.lines()
                .rev()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        };
        Ok(RestartPolicy {
            restart: value("Restart=").unwrap_or_else(|| "no".into()),
            prevent: value("RestartPreventExitStatus=")
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect(),
        })
    }

    /// Whether systemd restarts the service after it exits with `code`.
    pub(super) fn restarts_after(&self, code: i32) -> bool {
        if self.prevent.contains(&code) {
            return false;
        }
        match self.restart.as_str() {
            "always" => true,
            "on-failure" | "on-abnormal" | "on-abort" | "on-watchdog" => {
                code != 0 && self.restart == "on-failure"
            }
            "on-success" => code == 0,
            _ => false,
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Restart={}, RestartPreventExitStatus={}",
            self.restart,
            self.prevent
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> RestartPolicy {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        RestartPolicy::read(f.path()).unwrap()
    }

    #[test]
    fn restart_policy_follows_restart_prevent_exit_status() {
        let old = policy("[Service]\nRestart=on-failure\nRestartPreventExitStatus=2\n");
        assert!(old.restarts_after(3) && old.restarts_after(1) && !old.restarts_after(2));
        assert!(!old.restarts_after(0));
        let new = policy("[Service]\nRestart=on-failure\nRestartPreventExitStatus=2 3 4\n");
        assert!(!new.restarts_after(3) && !new.restarts_after(4) && new.restarts_after(1));
        let naive = policy("[Service]\nRestart=always\n");
        assert!(naive.restarts_after(3) && naive.restarts_after(0));
        assert!(!policy("[Service]\n").restarts_after(1));
    }
}
