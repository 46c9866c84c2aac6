//! The processes of a fleet scenario: one supervised slot per worker or committer, restarted
//! like an orchestrator would (with backoff), each exit judged by why the harness expected it;
//! and the waits on their logs (every wait polls with a deadline).

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;

use super::fleet::FleetOutcome;
use super::{Failure, Scenario};
use crate::job::{LogLine, Run};

pub(super) const JOINED: &str = "worker joined the fleet";
pub(super) const HANDOVER: &str = "task's first checkpoint on this worker";
pub(super) const ASSIGNED: &str = "tasks assigned";
pub(super) const REVOKED: &str = "tasks revoked: their uncommitted work is dropped";
pub(super) const CLAIMED: &str = "committer claimed";
pub(super) const RECORD: &str = "commit record durable";
pub(super) const WAIT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Worker,
    Committer,
}

/// Why the harness expects a process to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// SIGKILL by the harness: the slot restarts.
    Killed,
    /// Armed with `RECON_CRASH_AT=<point>:n`: it must die there by SIGKILL; the slot restarts.
    Armed(&'static str),
    /// SIGTERM of a worker that leaves: exit 0, not restarted.
    Removed,
    /// A second committer started: exit 4, not restarted.
    Fenced,
    /// SIGTERM at the drain: exit 0.
    Drain,
}

/// One supervised place of a process (a worker or the committer); its runs follow each other.
pub(super) struct Slot {
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) run: Option<Run>,
    pub(super) end: Option<End>,
    /// Not restarted any more (removed, fenced, drained).
    pub(super) retired: bool,
    pub(super) restart_at: Option<Instant>,
    pub(super) backoff: Duration,
}

#[derive(Default)]
pub(super) struct Fleet {
    pub(super) slots: Vec<Slot>,
    pub(super) ended: Vec<Run>,
    pub(super) workers: u32,
    pub(super) committers: u32,
    pub(super) out: FleetOutcome,
}

pub(super) fn lines_since(run: &Run, msg: &str, since: DateTime<Utc>) -> Vec<LogLine> {
    run.find(msg, since)
}

/// Tasks a worker's run owns, from its `tasks assigned` / `tasks revoked` lines.
pub(super) fn owned(run: &Run) -> BTreeSet<u32> {
    let mut owned = BTreeSet::new();
    for l in run.lines() {
        let tasks: Vec<u32> = l
            .fields
            .get("tasks")
            .map(|v| v.to_string())
            .unwrap_or_default()
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|d| d.parse().ok())
            .collect();
        if l.message == ASSIGNED {
            owned.extend(tasks);
        } else if l.message == REVOKED {
            for t in tasks {
                owned.remove(&t);
            }
        }
    }
    owned
}

impl Scenario<'_> {
    pub(super) fn spawn_slot(
        &mut self,
        f: &mut Fleet,
        i: usize,
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let role = match f.slots[i].role {
            Role::Worker => {
                f.workers += 1;
                "worker"
            }
            Role::Committer => {
                f.committers += 1;
                "committer"
            }
        };
        let run = self.orch.job.spawn_with(&["--role", role], None, env)?;
        let s = &mut f.slots[i];
        s.run = Some(run);
        s.end = None;
        s.restart_at = None;
        Ok(())
    }

    pub(super) fn add_slot(&mut self, f: &mut Fleet, role: Role) -> anyhow::Result<usize> {
        let n = f.slots.iter().filter(|s| s.role == role).count() + 1;
        let name = match role {
            Role::Worker => format!("w{n}"),
            Role::Committer => format!("c{n}"),
        };
        f.slots.push(Slot {
            name,
            role,
            run: None,
            end: None,
            retired: false,
            restart_at: None,
            backoff: super::BACKOFF_MIN,
        });
        let i = f.slots.len() - 1;
        self.spawn_slot(f, i, &[])?;
        Ok(i)
    }

    /// Reaps ended processes, judges each exit, restarts what an orchestrator restarts.
    pub(super) fn supervise(&mut self, f: &mut Fleet) -> Result<(), Failure> {
        for i in 0..f.slots.len() {
            let s = &mut f.slots[i];
            if let Some(run) = s.run.as_mut()
                && let Some(status) = run.poll()?
            {
                let run = s.run.take().expect("run");
                let expected = s.end.map(|e| match e {
                    End::Killed => "sigkill",
                    End::Armed(_) => "crash point",
                    End::Removed => "sigterm: leaves",
                    End::Fenced => "fenced by a second committer",
                    End::Drain => "sigterm: drain",
                });
                let during = std::mem::take(&mut self.orch.during);
                self.orch.during = format!("{during} [{}]", s.name);
                self.orch.record_exit(&run, status, expected);
                self.orch.during = during;
                let text = run.text();
                let lived = run.started.elapsed();
                let what = format!("{} (run {})", s.name, run.n);
                f.ended.push(run);
                let clean = match s.role {
                    Role::Worker => "worker stopped cleanly",
                    Role::Committer => "committer stopped cleanly",
                };
                match s.end {
                    Some(End::Killed) => {}
                    Some(End::Armed(point)) => {
                        if status.signal() != Some(libc::SIGKILL)
                            || !text.contains(&format!("crash point {point} reached"))
                        {
                            return Err(Failure::Pipeline(format!(
                                "{what} armed with {point} should die by SIGKILL there; it ended with {status}:\n{}",
                                tail(&text, 20)
                            )));
                        }
                    }
                    Some(End::Removed | End::Drain) => {
                        s.retired = true;
                        if !status.success() || !text.contains(clean) {
                            return Err(Failure::Pipeline(format!(
                                "{what}: SIGTERM must stop it cleanly (exit 0, {clean:?}), got {status}:\n{}",
                                tail(&text, 20)
                            )));
                        }
                    }
                    Some(End::Fenced) => {
                        s.retired = true;
                        if status.code() != Some(4) {
                            return Err(Failure::Pipeline(format!(
                                "{what}: a second committer started, the first must stop fenced (exit 4), got {status}:\n{}",
                                tail(&text, 20)
                            )));
                        }
                        f.out.fenced_committers += 1;
                    }
                    None => {
                        let loud = text.contains("recon-pipeline: error:");
                        if status.code() != Some(1) || !loud {
                            return Err(Failure::Pipeline(format!(
                                "{what} ended unasked with {status} (only a loud exit 1, transient, is restarted):\n{}",
                                tail(&text, 25)
                            )));
                        }
                    }
                }
                if !s.retired {
                    s.backoff = if lived < Duration::from_secs(5) {
                        (s.backoff * 2).min(Duration::from_secs(3))
                    } else {
                        super::BACKOFF_MIN
                    };
                    s.restart_at = Some(Instant::now() + s.backoff);
                }
            }
            let s = &f.slots[i];
            if s.run.is_none() && !s.retired && s.restart_at.is_some_and(|t| Instant::now() >= t) {
                self.orch.restarts += 1;
                self.spawn_slot(f, i, &[])?;
            }
        }
        Ok(())
    }

    pub(super) fn supervise_for(&mut self, f: &mut Fleet, d: Duration) -> Result<(), Failure> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.supervise(f)?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Polls (supervising) until `found` sees something, at most `WAIT`.
    pub(super) fn poll_until<T>(
        &mut self,
        f: &mut Fleet,
        what: &str,
        mut found: impl FnMut(&Fleet) -> Option<T>,
    ) -> Result<T, Failure> {
        let start = Instant::now();
        loop {
            self.supervise(f)?;
            if let Some(t) = found(f) {
                return Ok(t);
            }
            if start.elapsed() > WAIT {
                let tails: Vec<String> = f
                    .slots
                    .iter()
                    .filter_map(|s| {
                        s.run
                            .as_ref()
                            .map(|r| format!("{} (run {}):\n{}", s.name, r.n, r.tail(8)))
                    })
                    .collect();
                return Err(Failure::Pipeline(format!(
                    "{what}: not within {WAIT:?}; last lines:\n{}",
                    tails.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a committer made a commit record holding records at or after `since`.
    pub(super) fn wait_record(
        &mut self,
        f: &mut Fleet,
        since: DateTime<Utc>,
        what: &str,
    ) -> Result<Duration, Failure> {
        let at = self.poll_until(f, what, |f| {
            runs(f, Role::Committer)
                .flat_map(|r| lines_since(r, RECORD, since))
                .filter(|l| l.num("records").unwrap_or(0) > 0)
                .map(|l| l.at)
                .min()
        })?;
        Ok((at - since).to_std().unwrap_or_default())
    }

    /// Waits until a task's first checkpoint on some worker at or after `since` (in slot
    /// `only`, if given).
    pub(super) fn wait_handover(
        &mut self,
        f: &mut Fleet,
        since: DateTime<Utc>,
        only: Option<usize>,
        what: &str,
    ) -> Result<Duration, Failure> {
        let at = self.poll_until(f, what, |f| {
            f.slots
                .iter()
                .enumerate()
                .filter(|(i, s)| s.role == Role::Worker && only.is_none_or(|o| o == *i))
                .filter_map(|(_, s)| s.run.as_ref())
                .flat_map(|r| lines_since(r, HANDOVER, since))
                .map(|l| l.at)
                .min()
        })?;
        Ok((at - since).to_std().unwrap_or_default())
    }

    /// Live workers that have joined the group (not paused, not being stopped).
    pub(super) fn live_workers(&mut self, f: &mut Fleet) -> Vec<usize> {
        let epoch = Utc::now() - chrono::Duration::days(1);
        f.slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.role == Role::Worker && !s.retired && s.end.is_none())
            .filter_map(|(i, s)| {
                let r = s.run.as_mut()?;
                (r.running() && !r.find(JOINED, epoch).is_empty()).then_some(i)
            })
            .collect()
    }

    /// A live worker, chosen by the scenario's rng (waits until one joined).
    pub(super) fn pick_worker(&mut self, f: &mut Fleet, owning: bool) -> Result<usize, Failure> {
        let start = Instant::now();
        loop {
            let mut live = self.live_workers(f);
            if owning && start.elapsed() < Duration::from_secs(60) {
                live.retain(|i| {
                    f.slots[*i]
                        .run
                        .as_ref()
                        .is_some_and(|r| !owned(r).is_empty())
                });
            }
            if !live.is_empty() {
                return Ok(live[self.rng.random_range(0..live.len())]);
            }
            if start.elapsed() > WAIT {
                return Err(Failure::Pipeline(
                    "no worker joined the fleet within 180 s".into(),
                ));
            }
            self.supervise_for(f, Duration::from_millis(200))?;
        }
    }

    /// The committer: the live, not fenced committer slot (waits for a restart in progress).
    pub(super) fn committer(&mut self, f: &mut Fleet) -> Result<usize, Failure> {
        self.poll_until(f, "a running committer that claimed", |f| {
            let epoch = Utc::now() - chrono::Duration::days(1);
            f.slots.iter().position(|s| {
                s.role == Role::Committer
                    && !s.retired
                    && s.end.is_none()
                    && s.run
                        .as_ref()
                        .is_some_and(|r| !r.find(CLAIMED, epoch).is_empty())
            })
        })
    }

    /// Waits for the armed run of slot `i` to end (the supervisor judges how).
    pub(super) fn expect_crash(
        &mut self,
        f: &mut Fleet,
        i: usize,
        point: &str,
    ) -> Result<(), Failure> {
        let n = f.slots[i].run.as_ref().map_or(0, |r| r.n);
        let name = f.slots[i].name.clone();
        self.poll_until(f, &format!("{name} armed with {point} reaching it"), |f| {
            f.slots[i]
                .run
                .as_ref()
                .is_none_or(|r| r.n != n)
                .then_some(())
        })
    }

    pub(super) fn kill_slot(&mut self, f: &mut Fleet, i: usize) -> Result<(), Failure> {
        f.slots[i].end = Some(End::Killed);
        if let Some(r) = f.slots[i].run.as_mut() {
            r.kill()?;
        }
        self.supervise(f)
    }

    /// Kills slot `i` and starts it again at once armed with `RECON_CRASH_AT`.
    pub(super) fn rearm(
        &mut self,
        f: &mut Fleet,
        i: usize,
        point: &'static str,
        nth: u64,
    ) -> Result<(), Failure> {
        self.kill_slot(f, i)?;
        if let Some(mut r) = f.slots[i].run.take() {
            // The supervisor restarted it already (no backoff): take that one down too.
            r.kill()?;
            f.ended.push(r);
        }
        self.orch.restarts += 1;
        self.spawn_slot(f, i, &[("RECON_CRASH_AT", format!("{point}:{nth}"))])?;
        f.slots[i].end = Some(End::Armed(point));
        Ok(())
    }
}

pub(super) fn runs(f: &Fleet, role: Role) -> impl Iterator<Item = &Run> {
    f.slots
        .iter()
        .filter(move |s| s.role == role)
        .filter_map(|s| s.run.as_ref())
}

pub(super) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
