//! What a run found: the discrepancies with their keys, the counts, the JSON report and the
//! human summary.
//!
//! The JSON report is a compatibility promise (alerting and dashboards read it): keys are only
//! ever added. `status` is `"clean"`, `"discrepancies"`, `"error"` or `"empty"`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Kinds of discrepancy. The snake_case name is what `verification_discrepancies.kind` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// (a) A truth event of the day is not in `ledger_events`.
    Missing,
    /// (b) A `ledger_events` row of the day has no truth event.
    Phantom,
    /// (c) An event id appears in more than one `ledger_events` row.
    DuplicateEventId,
    /// (c) Two different rows claim one Kafka position.
    DuplicatePosition,
    /// (a) The amount differs from the truth.
    AmountMismatch,
    /// (a) The currency differs from the truth.
    CurrencyMismatch,
    /// (a) Another field differs (type, trip, time, ids, Kafka position).
    ContentMismatch,
    /// (a) A truth dead letter is not in `rejected_events`.
    MissingReject,
    /// (b) A `rejected_events` row of the day has no truth dead letter.
    PhantomReject,
    /// (a) A dead letter is in `rejected_events` with another reason.
    RejectMismatch,
    /// (d) Totals per event type and currency differ.
    TotalMismatch,
    /// (e) A trip's latest balance differs from the fold of its events.
    BalanceMismatch,
    /// (f) Committed offset ranges leave a gap.
    OffsetGap,
    /// (f) Committed offset ranges overlap.
    OffsetOverlap,
    /// (g) A row of the current-balance table differs from the trip's latest `trip_balances` row.
    CurrentBalanceMismatch,
    /// (h) The alerts topic disagrees with the trips' statuses (duplicate, missing or stale alert).
    AlertMismatch,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 16] = [
        Kind::Missing,
        Kind::Phantom,
        Kind::DuplicateEventId,
        Kind::DuplicatePosition,
        Kind::AmountMismatch,
        Kind::CurrencyMismatch,
        Kind::ContentMismatch,
        Kind::MissingReject,
        Kind::PhantomReject,
        Kind::RejectMismatch,
        Kind::TotalMismatch,
        Kind::BalanceMismatch,
        Kind::OffsetGap,
        Kind::OffsetOverlap,
        Kind::CurrentBalanceMismatch,
        Kind::AlertMismatch,
    ];

    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Phantom => "phantom",
            Kind::DuplicateEventId => "duplicate_event_id",
            Kind::DuplicatePosition => "duplicate_position",
            Kind::AmountMismatch => "amount_mismatch",
            Kind::CurrencyMismatch => "currency_mismatch",
            Kind::ContentMismatch => "content_mismatch",
            Kind::MissingReject => "missing_reject",
            Kind::PhantomReject => "phantom_reject",
            Kind::RejectMismatch => "reject_mismatch",
            Kind::TotalMismatch => "total_mismatch",
            Kind::BalanceMismatch => "balance_mismatch",
            Kind::OffsetGap => "offset_gap",
            Kind::OffsetOverlap => "offset_overlap",
            Kind::CurrentBalanceMismatch => "current_balance_mismatch",
            Kind::AlertMismatch => "alert_mismatch",
        }
    }
}

/// One discrepancy with its keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    /// What is wrong.
    pub kind: Kind,
    /// The event, where one is concerned.
    pub event_id: Option<String>,
    /// The trip, where one is concerned.
    pub trip_id: Option<String>,
    /// Kafka partition, where known.
    pub kafka_partition: Option<i32>,
    /// Kafka offset, where known.
    pub kafka_offset: Option<i64>,
    /// The values that disagree.
    pub detail: String,
}

impl Discrepancy {
    /// A discrepancy with only a detail; add keys with the `with_*` methods.
    pub fn new(kind: Kind, detail: impl Into<String>) -> Discrepancy {
        Discrepancy {
            kind,
            event_id: None,
            trip_id: None,
            kafka_partition: None,
            kafka_offset: None,
            detail: detail.into(),
        }
    }

    /// Sets the event id.
    pub fn event(mut self, id: impl ToString) -> Self {
        self.event_id = Some(id.to_string());
        self
    }

    /// Sets the trip id.
    pub fn trip(mut self, id: impl ToString) -> Self {
        self.trip_id = Some(id.to_string());
        self
    }

    /// Sets the Kafka position.
    pub fn at(mut self, partition: i32, offset: i64) -> Self {
        self.kafka_partition = Some(partition);
        self.kafka_offset = Some(offset);
        self
    }
}

/// Discrepancies found by one part of the run: all counted, the first `keep_max` kept.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// Count per kind.
    pub counts: BTreeMap<Kind, u64>,
    /// Kept discrepancies.
    pub kept: Vec<Discrepancy>,
    /// How many to keep.
    pub keep_max: usize,
}

impl Findings {
    /// Keeps at most `keep_max` discrepancies (all are counted).
    pub fn new(keep_max: usize) -> Findings {
        Findings {
            keep_max,
            ..Findings::default()
        }
    }

    /// Records one discrepancy.
    pub fn add(&mut self, d: Discrepancy) {
        *self.counts.entry(d.kind).or_default() += 1;
        if self.kept.len() < self.keep_max {
            self.kept.push(d);
        }
    }

    /// Count of `kind`.
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// Total of all kinds.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Adds another part's findings.
    pub fn merge(&mut self, other: Findings) {
        for (k, n) in other.counts {
            *self.counts.entry(k).or_default() += n;
        }
        let room = self.keep_max.saturating_sub(self.kept.len());
        self.kept.extend(other.kept.into_iter().take(room));
    }
}

/// The outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Everything proven: exit 0.
    Clean,
    /// At least one discrepancy: exit 1.
    Discrepancies,
    /// Could not verify: exit 2.
    Error,
    /// Nothing to prove: the truth holds no event or dead letter of the day and the lakehouse
    /// no row of it: exit 3 (a wrong date, a wrong truth, a job that never ran), or 0 with
    /// `--allow-empty` where such a day is expected.
    Empty,
}

impl Status {
    /// `"clean"`, `"discrepancies"`, `"error"` or `"empty"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Clean => "clean",
            Status::Discrepancies => "discrepancies",
            Status::Error => "error",
            Status::Empty => "empty",
        }
    }

    /// The process exit code: 0, 1, 2 or 3.
    pub fn exit_code(&self) -> i32 {
        match self {
            Status::Clean => 0,
            Status::Discrepancies => 1,
            Status::Error => 2,
            Status::Empty => 3,
        }
    }
}

/// Totals of one event type and currency, both sides (amounts as decimal strings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TotalLine {
    /// Event type.
    pub event_type: String,
    /// Currency.
    pub currency: String,
    /// Truth events.
    pub truth_count: u64,
    /// Sum of truth amounts.
    pub truth_amount: String,
    /// Ledger rows.
    pub ledger_count: u64,
    /// Sum of ledger amounts.
    pub ledger_amount: String,
}

/// The report of one run. Serialized as the JSON report and into `verification_runs`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Unique id of this run (a re-run is a new run).
    pub run_id: String,
    /// Outcome.
    pub status: Status,
    /// The business day, `YYYY-MM-DD`.
    pub business_date: String,
    /// Its zone.
    pub time_zone: String,
    /// UTC window start (RFC 3339).
    pub window_start: String,
    /// UTC window end, exclusive.
    pub window_end: String,
    /// `kafka`, `postgres` or `files`.
    pub truth_source: String,
    /// Distinct truth events of the day.
    pub truth_events: u64,
    /// Truth dead letters of the day.
    pub truth_rejects: u64,
    /// Exact re-sends the truth held (dropped by design, in no table).
    pub truth_resends: u64,
    /// `ledger_events` rows of the day.
    pub ledger_events: u64,
    /// `rejected_events` rows of the day.
    pub rejected_events: u64,
    /// Dead letters without a readable date (matched only with a Kafka truth).
    pub rejects_undated: u64,
    /// Events of the day the job dead-lettered as `beyond_horizon` (later than its horizon;
    /// never summed), each proven against its truth version (Kafka truth; also counted in
    /// `truth_rejects` and `rejected_events`).
    pub beyond_horizon: u64,
    /// Duplicate event ids and positions.
    pub duplicates: u64,
    /// Missing events and dead letters.
    pub missing: u64,
    /// Phantom rows and dead letters.
    pub phantom: u64,
    /// Events whose amount or currency differs.
    pub amount_mismatches: u64,
    /// Events or dead letters whose other content differs.
    pub content_mismatches: u64,
    /// Totals (type, currency) that differ.
    pub totals_mismatches: u64,
    /// Trips whose balance differs from the fold.
    pub balance_mismatches: u64,
    /// Trips whose balance was checked.
    pub balances_checked: u64,
    /// Gaps and overlaps in committed offset ranges.
    pub offset_gaps: u64,
    /// Commits (snapshots) whose offset ranges were checked.
    pub commits_checked: u64,
    /// Count per discrepancy kind.
    pub discrepancies_by_kind: BTreeMap<String, u64>,
    /// Totals per event type and currency.
    pub totals: Vec<TotalLine>,
    /// The kept discrepancies (all are counted above).
    pub discrepancies: Vec<Discrepancy>,
    /// Whether more discrepancies were found than kept.
    pub discrepancies_truncated: bool,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// When it finished.
    pub finished_at: String,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Events of the day verified per second (the larger of truth events and ledger rows).
    pub events_per_s: f64,
    /// Peak resident memory of the process.
    pub peak_rss_bytes: u64,
    /// Why the run could not verify (status `error`).
    pub error: Option<String>,
    /// Wall time per phase (`read_ms`, `widen_ms`, `check_ms`, `offsets_ms`), for tuning.
    pub phases_ms: BTreeMap<String, u64>,
    /// What checks (g)/(h) looked at, when the job has optional outputs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<crate::outputs::OutputsChecked>,
    /// Per partition, the next offset the job reads after its newest commit (its committed cut).
    pub job_committed_offsets: BTreeMap<String, i64>,
    /// Offsets between the job's committed cut and the log end, all partitions (Kafka truth
    /// only; transaction markers included). Not zero while the job runs or after it stopped
    /// with a backlog.
    pub job_lag_offsets: Option<u64>,
    /// Kept `missing` / `missing_reject` discrepancies at or after the job's committed cut: the
    /// job has not consumed them yet (still missing: the proof of the day is not complete).
    pub missing_not_consumed: u64,
}

impl Report {
    /// The report of a run that could not verify: status `error`, every counter 0.
    pub fn error(
        run_id: String,
        day: &crate::day::BusinessDay,
        truth_source: &str,
        started_at: String,
        why: String,
    ) -> Report {
        Report {
            run_id,
            status: Status::Error,
            business_date: day.date.to_string(),
            time_zone: day.tz.name().to_string(),
            window_start: day.start.to_rfc3339(),
            window_end: day.end.to_rfc3339(),
            truth_source: truth_source.to_string(),
            truth_events: 0,
            truth_rejects: 0,
            truth_resends: 0,
            ledger_events: 0,
            rejected_events: 0,
            rejects_undated: 0,
            beyond_horizon: 0,
            duplicates: 0,
            missing: 0,
            phantom: 0,
            amount_mismatches: 0,
            content_mismatches: 0,
            totals_mismatches: 0,
            balance_mismatches: 0,
            balances_checked: 0,
            offset_gaps: 0,
            commits_checked: 0,
            discrepancies_by_kind: BTreeMap::new(),
            totals: Vec::new(),
            discrepancies: Vec::new(),
            discrepancies_truncated: false,
            started_at,
            finished_at: chrono::Utc::now().to_rfc3339(),
            elapsed_ms: 0,
            events_per_s: 0.0,
            peak_rss_bytes: crate::memory::peak_rss_bytes(),
            error: Some(why),
            phases_ms: BTreeMap::new(),
            outputs: None,
            job_committed_offsets: BTreeMap::new(),
            job_lag_offsets: None,
            missing_not_consumed: 0,
        }
    }

    /// Fills the counters from `findings` and sets the status.
    pub fn apply(&mut self, findings: &Findings) {
        let c = |k| findings.count(k);
        self.duplicates = c(Kind::DuplicateEventId) + c(Kind::DuplicatePosition);
        self.missing = c(Kind::Missing) + c(Kind::MissingReject);
        self.phantom = c(Kind::Phantom) + c(Kind::PhantomReject);
        self.amount_mismatches = c(Kind::AmountMismatch) + c(Kind::CurrencyMismatch);
        self.content_mismatches = c(Kind::ContentMismatch) + c(Kind::RejectMismatch);
        self.totals_mismatches = c(Kind::TotalMismatch);
        self.balance_mismatches = c(Kind::BalanceMismatch);
        self.offset_gaps = c(Kind::OffsetGap) + c(Kind::OffsetOverlap);
        self.discrepancies_by_kind = findings
            .counts
            .iter()
            .map(|(k, n)| (k.as_str().to_string(), *n))
            .collect();
        self.discrepancies = findings.kept.clone();
        self.discrepancies_truncated = findings.total() > findings.kept.len() as u64;
        let nothing = self.truth_events == 0
            && self.truth_rejects == 0
            && self.ledger_events == 0
            && self.rejected_events == 0
            && self.balances_checked == 0;
        self.status = if findings.total() > 0 {
            Status::Discrepancies
        } else if nothing {
            Status::Empty
        } else {
            Status::Clean
        };
    }

    /// The JSON report.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Discrepancies shown in the human summary.
const SUMMARY_EXAMPLES_MAX: usize = 20;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.status {
            Status::Clean => "CLEAN: every event of the day is in the lakehouse exactly once",
            Status::Discrepancies => "DISCREPANCIES FOUND",
            Status::Error => "COULD NOT VERIFY",
            Status::Empty => {
                "EMPTY: no event of the day in the truth nor in the lakehouse (check --date, \
                 --tz and the truth; --allow-empty accepts such a day)"
            }
        };
        writeln!(
            f,
            "batch-verify {} ({}, {} .. {}) against {}: {verdict}",
            self.business_date,
            self.time_zone,
            self.window_start,
            self.window_end,
            self.truth_source
        )?;
        if let Some(e) = &self.error {
            writeln!(f, "  why: {e}")?;
        }
        let rows = [
            ("truth events", self.truth_events),
            ("ledger_events rows", self.ledger_events),
            ("truth dead letters", self.truth_rejects),
            ("rejected_events rows", self.rejected_events),
            ("exact re-sends dropped", self.truth_resends),
            ("undated dead letters", self.rejects_undated),
            ("beyond the horizon", self.beyond_horizon),
            ("duplicates", self.duplicates),
            ("missing", self.missing),
            ("phantom", self.phantom),
            ("amount mismatches", self.amount_mismatches),
            ("content mismatches", self.content_mismatches),
            ("totals mismatches", self.totals_mismatches),
            ("balances checked", self.balances_checked),
            ("balance mismatches", self.balance_mismatches),
            ("commits checked", self.commits_checked),
            ("offset gaps/overlaps", self.offset_gaps),
        ];
        for (name, n) in rows {
            writeln!(f, "  {name:<24}{n:>14}")?;
        }
        if let Some(lag) = self.job_lag_offsets {
            writeln!(f, "  {:<24}{lag:>14}", "job lag (offsets)")?;
            if self.missing_not_consumed > 0 {
                writeln!(
                    f,
                    "  {:<24}{:>14}",
                    "  missing, not consumed", self.missing_not_consumed
                )?;
            }
        }
        if let Some(o) = &self.outputs {
            let c = |k: &str| self.discrepancies_by_kind.get(k).copied().unwrap_or(0);
            for (name, n) in [
                ("current balances", o.current_balances_checked),
                ("  in flight", o.current_balances_in_flight),
                ("  mismatches", c("current_balance_mismatch")),
                ("alerts", o.alerts_checked),
                ("  in flight", o.alerts_in_flight),
                ("  mismatches", c("alert_mismatch")),
            ] {
                writeln!(f, "  {name:<24}{n:>14}")?;
            }
        }
        for d in self.discrepancies.iter().take(SUMMARY_EXAMPLES_MAX) {
            write!(f, "  ! {}", d.kind.as_str())?;
            if let Some(e) = &d.event_id {
                write!(f, " event {e}")?;
            }
            if let Some(t) = &d.trip_id {
                write!(f, " trip {t}")?;
            }
            if let (Some(p), Some(o)) = (d.kafka_partition, d.kafka_offset) {
                write!(f, " at {p}@{o}")?;
            }
            writeln!(f, ": {}", d.detail)?;
        }
        let total: u64 = self.discrepancies_by_kind.values().sum();
        if total > SUMMARY_EXAMPLES_MAX as u64 {
            writeln!(
                f,
                "  ... {} more in the JSON report and verification_discrepancies",
                total - SUMMARY_EXAMPLES_MAX as u64
            )?;
        }
        write!(
            f,
            "  run {} in {:.1} s ({:.0} events/s, peak RSS {} MiB)",
            self.run_id,
            self.elapsed_ms as f64 / 1000.0,
            self.events_per_s,
            self.peak_rss_bytes / (1024 * 1024)
        )
    }
}
