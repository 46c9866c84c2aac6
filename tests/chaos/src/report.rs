//! The run's report: printed as a summary and written as JSON.

use std::collections::BTreeMap;
use std::fmt;

use crate::scenario::Outcome;

/// Percentiles of recovery times.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Percentiles {
    /// Measurements.
    pub count: usize,
    /// Median, ms.
    pub p50_ms: u64,
    /// 99th percentile, ms (nearest rank).
    pub p99_ms: u64,
    /// Largest, ms.
    pub max_ms: u64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `v`.
    pub fn of(mut v: Vec<u64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_unstable();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            count: v.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: *v.last().expect("non-empty"),
        }
    }
}

/// The whole run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    /// Run seed.
    pub seed: u64,
    /// `ci`, `random` or `replay`.
    pub mode: String,
    /// Scenarios asked for.
    pub scenarios_requested: u32,
    /// Scenarios run.
    pub scenarios_run: u32,
    /// Clean scenarios.
    pub clean: u32,
    /// Scenarios where the pipeline misbehaved.
    pub failed: u32,
    /// Scenarios voided by a harness or service failure.
    pub void: u32,
    /// Faults injected, by kind (object-store faults also by sub-kind).
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Hostile input classes, by scenario count.
    pub hostile_by_kind: BTreeMap<String, u64>,
    /// Job processes started.
    pub runs: u64,
    /// Restarts by the orchestrator after an exit.
    pub restarts: u64,
    /// Exits by class: killed, clean, loud, silent.
    pub exits_by_class: BTreeMap<String, u64>,
    /// Exits by status (`exit 3` = operator needed, `exit 4` = fenced, `signal 9`, ...).
    pub exits_by_status: BTreeMap<String, u64>,
    /// Records of deleted topics that the job had not consumed: lost with the topic and taken
    /// out of the oracle explicitly.
    pub records_lost_with_deleted_topic: u64,
    /// Wall time per scenario kind (a scenario counts once for each of its kinds; `none` when it
    /// has none): count and mean seconds.
    pub seconds_by_kind: BTreeMap<String, KindTime>,
    /// Wall time by phase over all scenarios (setup, faults, drain, verify, cleanup), seconds.
    pub seconds_by_phase: BTreeMap<String, f64>,
    /// Loud stops' messages (first line, clipped), with counts.
    pub loud_stop_messages: BTreeMap<String, u64>,
    /// Records published.
    pub records_sent: u64,
    /// Distinct events checked (each in reconcile and in batch-verify).
    pub events_checked: u64,
    /// Dead letters checked.
    pub dead_letters_checked: u64,
    /// Exact re-sends that had to be dropped.
    pub resends_checked: u64,
    /// Business days verified by batch-verify.
    pub verify_days: u64,
    /// Duplicates found (must be 0).
    pub duplicates: u64,
    /// Losses found (must be 0).
    pub losses: u64,
    /// Recovery: fault cleared -> first checkpoint holding new records.
    pub recovery: Percentiles,
    /// Recovery by fault kind.
    pub recovery_by_fault: BTreeMap<String, Percentiles>,
    /// Distinct observations.
    pub observations: BTreeMap<String, u64>,
    /// Notable job log messages over all runs (which recovery paths ran).
    pub job_log_events: BTreeMap<String, u64>,
    /// batch-verify findings contradicted by the exact reconciliation and matching a known
    /// batch-verify limitation (not pipeline failures), by pattern.
    pub verifier_false_positives: BTreeMap<String, u64>,
    /// Scenarios with bounded state on, and what left memory and came back over them.
    pub bounded: BoundedTotals,
    /// Failing and void scenarios: seed, faults, error, logs.
    pub failures: Vec<serde_json::Value>,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// The binary under test.
    pub pipeline_binary: String,
    /// Its SHA-256.
    pub pipeline_sha256: String,
    /// `git rev-parse HEAD` and whether the tree had local changes.
    pub git: String,
    /// Every scenario.
    pub scenarios: Vec<Outcome>,
}

/// Bounded state over the run's scenarios (see `scenario::bounded::BoundedOutcome`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BoundedTotals {
    /// Scenarios with eviction on.
    pub scenarios: u64,
    /// ... of which ran a late phase.
    pub late_phases: u64,
    /// Trips out of memory at the late phases' checkpoints.
    pub evicted: u64,
    /// Trips out of memory that late records needed (each came back at least once).
    pub brought_back: u64,
    /// Late records sent (new events, exact and conflicting re-sends, reused ids).
    pub late_records: u64,
    /// Late new events (refunds, adjustments).
    pub late_events: u64,
    /// Late exact re-sends.
    pub late_exact_resends: u64,
    /// Late conflicting re-sends.
    pub late_conflicting_resends: u64,
    /// Late copies of evicted trips' ids on other trips.
    pub late_reused_ids: u64,
    /// Runs killed at `after-cold-run-written`.
    pub killed_at_cold_run: u64,
    /// Restarts with the local cold dir wiped (and of those, with runs in it), and kept.
    pub restarts_cold_dir_wiped: u64,
    /// See `restarts_cold_dir_wiped`.
    pub restarts_cold_dir_wiped_with_runs: u64,
    /// See `restarts_cold_dir_wiped`.
    pub restarts_cold_dir_kept: u64,
    /// Starts that opened a cold tier with runs.
    pub starts_with_cold_runs: u64,
}

/// Wall time of the scenarios of one kind.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KindTime {
    /// Scenarios.
    pub count: u64,
    /// Mean wall time, seconds.
    pub mean_s: f64,
}

/// Messages normalised for grouping: digits become `#`.
fn group(msg: &str) -> String {
    let mut out = String::new();
    let mut last_digit = false;
    for c in msg.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    // Job names carry a hex tag; collapse them too.
    out.split_whitespace()
        .map(|w| if w.contains("chaos#") { "<job>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Report {
    /// Adds a scenario.
    pub fn add(&mut self, o: Outcome) {
        self.scenarios_run += 1;
        match o.result.as_str() {
            "clean" => self.clean += 1,
            "failed" => self.failed += 1,
            _ => self.void += 1,
        }
        for f in &o.faults {
            *self.faults_by_kind.entry(f.clone()).or_default() += 1;
        }
        for (k, v) in &o.storage_faults {
            *self
                .faults_by_kind
                .entry(format!("object_store_faults/{k}"))
                .or_default() += v;
        }
        if let Some(p) = &o.plan {
            for h in &p.hostile {
                *self
                    .hostile_by_kind
                    .entry(h.name().to_string())
                    .or_default() += 1;
            }
        }
        self.runs += u64::from(o.runs);
        self.restarts += u64::from(o.restarts);
        self.records_lost_with_deleted_topic += o.lost_with_topic;
        for (k, ms) in &o.phases_ms {
            *self.seconds_by_phase.entry(k.clone()).or_default() += *ms as f64 / 1000.0;
        }
        let mut kinds: Vec<String> = o
            .faults
            .iter()
            .filter(|k| !k.contains('/'))
            .cloned()
            .collect();
        kinds.sort();
        kinds.dedup();
        if kinds.is_empty() {
            kinds.push("none".into());
        }
        for k in kinds {
            let t = self.seconds_by_kind.entry(k).or_default();
            t.mean_s =
                (t.mean_s * t.count as f64 + o.elapsed_ms as f64 / 1000.0) / (t.count + 1) as f64;
            t.count += 1;
        }
        for e in &o.exits {
            *self.exits_by_class.entry(e.class.to_string()).or_default() += 1;
            *self.exits_by_status.entry(e.status.clone()).or_default() += 1;
            if let Some(m) = &e.message {
                *self
                    .loud_stop_messages
                    .entry(group(&crate::scenario::short(m)))
                    .or_default() += 1;
            }
        }
        if o.result != "void" {
            self.records_sent += o.verdict.records_sent;
            self.events_checked += o.verdict.events_expected;
            self.dead_letters_checked += o.verdict.rejected_expected;
            self.resends_checked += o.traffic.duplicates;
            self.verify_days += o.verdict.verify_days;
            self.duplicates += o.verdict.duplicates;
            self.losses += o.verdict.losses;
        }
        for ob in &o.observations {
            *self.observations.entry(group(ob)).or_default() += 1;
        }
        for (k, v) in &o.log_events {
            *self.job_log_events.entry(k.clone()).or_default() += v;
        }
        for fp in &o.verdict.verifier_false_positives {
            let pattern = fp.split(" | ").next().unwrap_or(fp).to_string();
            *self.verifier_false_positives.entry(pattern).or_default() += 1;
        }
        if let Some(b) = &o.bounded {
            let t = &mut self.bounded;
            t.scenarios += 1;
            t.late_phases += u64::from(b.late_phase);
            t.evicted += b.evicted;
            t.brought_back += b.brought_back;
            t.late_records += b.late.records();
            t.late_events += b.late.late_events;
            t.late_exact_resends += b.late.exact_resends;
            t.late_conflicting_resends += b.late.conflicting_resends;
            t.late_reused_ids += b.late.reused_on_new_trip + b.late.reused_on_hot_trip;
            t.killed_at_cold_run += b.killed_at_cold_run;
            t.restarts_cold_dir_wiped += u64::from(b.restarts_cold_dir_wiped);
            t.restarts_cold_dir_wiped_with_runs += u64::from(b.restarts_cold_dir_wiped_with_runs);
            t.restarts_cold_dir_kept += u64::from(b.restarts_cold_dir_kept);
            t.starts_with_cold_runs += b.starts_with_cold_runs;
        }
        if o.result != "clean" {
            self.failures.push(serde_json::json!({
                "index": o.plan.as_ref().map(|p| p.index),
                "seed": o.plan.as_ref().map(|p| p.seed),
                "replay": o.plan.as_ref().map(|p| format!(
                    "recon-chaos --replay {}{}",
                    p.seed,
                    if p.bounded.is_some() { " --bounded" } else { "" }
                )),
                "result": o.result,
                "faults": o.faults,
                "error": o.error,
                "logs": o.logs,
            }));
        }
        self.scenarios.push(o);
        self.recompute();
    }

    fn recompute(&mut self) {
        let all: Vec<u64> = self
            .scenarios
            .iter()
            .flat_map(|s| s.recoveries.iter().map(|r| r.ms))
            .collect();
        self.recovery = Percentiles::of(all);
        let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for s in &self.scenarios {
            for r in &s.recoveries {
                by.entry(r.fault.clone()).or_default().push(r.ms);
            }
        }
        self.recovery_by_fault = by
            .into_iter()
            .map(|(k, v)| (k, Percentiles::of(v)))
            .collect();
    }

    /// Whether every scenario was clean and nothing was duplicated or lost.
    pub fn passed(&self) -> bool {
        self.failed == 0
            && self.void == 0
            && self.duplicates == 0
            && self.losses == 0
            && self.scenarios_run > 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "== recon-chaos report (seed {}, {})",
            self.seed, self.mode
        )?;
        writeln!(
            f,
            "scenarios      {} run of {} | clean {} | failed {} | void {}",
            self.scenarios_run, self.scenarios_requested, self.clean, self.failed, self.void
        )?;
        writeln!(f, "duplicates     {}", self.duplicates)?;
        writeln!(f, "losses         {}", self.losses)?;
        writeln!(
            f,
            "checked        {} events, {} dead letters, {} re-sends, {} records; {} batch-verify days",
            self.events_checked,
            self.dead_letters_checked,
            self.resends_checked,
            self.records_sent,
            self.verify_days
        )?;
        writeln!(
            f,
            "job            {} runs, {} orchestrator restarts; exits {:?}",
            self.runs, self.restarts, self.exits_by_class
        )?;
        writeln!(
            f,
            "recovery       p50 {} ms, p99 {} ms, max {} ms ({} measurements)",
            self.recovery.p50_ms, self.recovery.p99_ms, self.recovery.max_ms, self.recovery.count
        )?;
        writeln!(f, "exits by status {:?}", self.exits_by_status)?;
        let b = &self.bounded;
        if b.scenarios > 0 {
            writeln!(
                f,
                "bounded state  {} scenarios ({} late phases): {} trips out of memory, {} brought back by {} late records ({} new events, {} exact re-sends, {} conflicting, {} reused ids); {} killed at after-cold-run-written; restarts cold dir wiped {} ({} with runs) / kept {}; {} starts opened cold runs",
                b.scenarios,
                b.late_phases,
                b.evicted,
                b.brought_back,
                b.late_records,
                b.late_events,
                b.late_exact_resends,
                b.late_conflicting_resends,
                b.late_reused_ids,
                b.killed_at_cold_run,
                b.restarts_cold_dir_wiped,
                b.restarts_cold_dir_wiped_with_runs,
                b.restarts_cold_dir_kept,
                b.starts_with_cold_runs
            )?;
        }
        if self.records_lost_with_deleted_topic > 0 {
            writeln!(
                f,
                "lost with deleted topics (accounted in the oracle) {}",
                self.records_lost_with_deleted_topic
            )?;
        }
        writeln!(
            f,
            "time by phase  {}",
            self.seconds_by_phase
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}s"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(f, "mean seconds per scenario, by kind")?;
        for (k, t) in &self.seconds_by_kind {
            writeln!(f, "  {k:<52} {:>5} × {:>6.1}s", t.count, t.mean_s)?;
        }
        writeln!(f, "faults by kind")?;
        for (k, v) in &self.faults_by_kind {
            let rec = self
                .recovery_by_fault
                .get(k)
                .map(|p| format!("  recovery p50 {} / p99 {} ms", p.p50_ms, p.p99_ms))
                .unwrap_or_default();
            writeln!(f, "  {k:<52} {v:>5}{rec}")?;
        }
        writeln!(f, "hostile input (scenarios)")?;
        for (k, v) in &self.hostile_by_kind {
            writeln!(f, "  {k:<52} {v:>5}")?;
        }
        if !self.loud_stop_messages.is_empty() {
            writeln!(f, "loud stops (the job's own message)")?;
            for (k, v) in &self.loud_stop_messages {
                writeln!(f, "  {v:>4} × {k}")?;
            }
        }
        if !self.job_log_events.is_empty() {
            writeln!(f, "job log events (recovery paths taken)")?;
            for (k, v) in &self.job_log_events {
                writeln!(f, "  {v:>5} × {k}")?;
            }
        }
        if !self.verifier_false_positives.is_empty() {
            writeln!(
                f,
                "batch-verify false positives (reconcile clean; known batch-verify limits)"
            )?;
            for (k, v) in &self.verifier_false_positives {
                writeln!(f, "  {v:>4} × {k}")?;
            }
        }
        if !self.observations.is_empty() {
            writeln!(f, "observations")?;
            for (k, v) in &self.observations {
                writeln!(f, "  {v:>4} × {k}")?;
            }
        }
        for x in &self.failures {
            writeln!(f, "FAILURE {x}")?;
        }
        write!(
            f,
            "elapsed {:.0}s; verdict: {}",
            self.elapsed_s,
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let p = Percentiles::of((1..=100).collect());
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms, p.count), (50, 99, 100, 100));
        let one = Percentiles::of(vec![7]);
        assert_eq!((one.p50_ms, one.p99_ms), (7, 7));
        assert_eq!(Percentiles::of(vec![]).count, 0);
    }

    #[test]
    fn messages_group_without_numbers() {
        assert_eq!(
            group("job chaos012_ab: generation 3 has taken over checkpoint 17"),
            "job <job> generation # has taken over checkpoint #"
        );
    }
}
