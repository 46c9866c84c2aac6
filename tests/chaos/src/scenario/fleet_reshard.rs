//! The operator's offline reshard of a fleet scenario (`FleetFault::Reshard`): the fleet is
//! stopped as the runbook says (workers first, then the committer, each by SIGTERM: exit 0),
//! `reshard --tasks <to> --yes` runs (killed once at a named point first, when the plan says
//! so, then run again, which must finish it), K changes in the configuration, and as many
//! workers as ran before start again with a new committer. The scenario's end checks judge
//! the result exactly as without it.

use std::time::Duration;

use super::fleet_procs::{End, Fleet, Role};
use super::{Failure, Outcome, Scenario};

/// Time allowed for one run of the command.
const RESHARD_DEADLINE: Duration = Duration::from_secs(180);

impl Scenario<'_> {
    pub(super) fn fleet_reshard(
        &mut self,
        f: &mut Fleet,
        to: u32,
        crash: Option<&'static str>,
        out: &mut Outcome,
    ) -> Result<(), Failure> {
        let cfg = recon_pipeline::config::Config::load(Some(&self.orch.job.config))
            .map_err(anyhow::Error::from)?;
        let from = cfg.fleet.tasks;
        let workers = f
            .slots
            .iter()
            .filter(|s| s.role == Role::Worker && !s.retired)
            .count();
        for role in [Role::Worker, Role::Committer] {
            self.stop_role(f, role)?;
        }
        let args = [
            "reshard",
            "--tasks",
            &to.to_string(),
            "--reason",
            "recon-chaos fleet reshard",
            "--yes",
        ]
        .map(String::from);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut said = Vec::new();
        if let Some(point) = crash {
            let env = [("RECON_CRASH_AT", point)];
            let (status, text) = self.orch.job.operator_env(&args, &env, RESHARD_DEADLINE)?;
            if status.success() || !text.contains(&format!("crash point {point} reached")) {
                return Err(Failure::Pipeline(format!(
                    "`reshard` armed with {point} should die there; it ended with {status}:\n{text}"
                )));
            }
            said.push(format!("killed at {point}"));
        }
        let (status, text) = self.orch.job.operator(&args, RESHARD_DEADLINE)?;
        let done = text
            .lines()
            .find(|l| l.starts_with("reshard written") || l.starts_with("reshard to"));
        match done {
            Some(line) if status.success() => said.push(line.chars().take(160).collect()),
            _ => {
                return Err(Failure::Pipeline(format!(
                    "`reshard --tasks {to}` on the stopped fleet (K = {from}) failed ({status}):\n{text}"
                )));
            }
        }
        for path in [&self.orch.job.config, &self.orch.job.verify_config] {
            let text = std::fs::read_to_string(path).map_err(anyhow::Error::from)?;
            let old = format!("\ntasks = {from}\n");
            if !text.contains(&old) {
                return Err(Failure::Pipeline(format!(
                    "{}: no `tasks = {from}` line to change",
                    path.display()
                )));
            }
            let text = text.replacen(&old, &format!("\ntasks = {to}\n"), 1);
            std::fs::write(path, text).map_err(anyhow::Error::from)?;
        }
        out.observations.push(format!(
            "fleet reshard {from} -> {to} tasks: {}",
            said.join("; ")
        ));
        self.add_slot(f, Role::Committer)?;
        for _ in 0..workers.max(1) {
            self.add_slot(f, Role::Worker)?;
        }
        Ok(())
    }

    /// SIGTERMs every live process of `role` (exit 0, not restarted) and waits until all
    /// ended; a slot waiting for its restart is retired.
    fn stop_role(&mut self, f: &mut Fleet, role: Role) -> Result<(), Failure> {
        for s in f.slots.iter_mut().filter(|s| s.role == role && !s.retired) {
            match s.run.as_ref() {
                Some(run) => {
                    run.signal(libc::SIGTERM)?;
                    s.end = Some(End::Removed);
                }
                None => s.retired = true,
            }
        }
        let what = format!("every {role:?} stopped for the reshard");
        self.poll_until(f, &what, |f| {
            f.slots
                .iter()
                .all(|s| s.role != role || s.run.is_none())
                .then_some(())
        })
    }
}
