//! The truth: what the generator meant to publish, the upstream ledger that verification
//! compares the lakehouse against.
//!
//! Every distinct valid event is recorded once, at its first emission (an exact re-send adds
//! nothing). Every bad record (poison, and the second version of a conflicting duplicate) is
//! recorded as a reject with its class, key and raw bytes. The first version of a conflicting
//! duplicate is the truth: first-seen wins, as in the pipeline.
//!
//! Each row gets a `seq`, its position among truth rows, and a canonical line:
//!
//! ```text
//! {"seq":0,"truth":"event","event":<Event::to_json>}
//! {"seq":7,"truth":"reject","class":"not_json","event_id":null,"key_hex":"7472...","payload_hex":"7b22..."}
//! ```
//!
//! The truth checksum is the SHA-256 of all lines in `seq` order, each ending in `\n`: exactly the
//! bytes of the JSON Lines file, and reproducible from PostgreSQL or Parquet by rendering the rows
//! ordered by `seq` (events and rejects share one `seq` space).

pub mod parquet;
pub mod postgres;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use recon_schemas::event::Event;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::plan::{Record, RecordKind};

/// One bad record as the truth keeps it.
#[derive(Clone, Copy, Debug)]
pub struct RejectRow<'a> {
    /// Position among truth rows.
    pub seq: u64,
    /// The rejection class (`RejectReason::as_str`, or `conflicting_duplicate`).
    pub class: &'a str,
    /// The event id, when the record has a valid one (conflicting duplicates).
    pub event_id: Option<Uuid>,
    /// The trip the record belongs to, when known.
    pub trip_id: Option<&'a str>,
    /// The Kafka key.
    pub key: Option<&'a [u8]>,
    /// The raw value bytes.
    pub payload: &'a [u8],
}

/// The class recorded for the second version of a conflicting duplicate.
pub const CONFLICTING_DUPLICATE: &str = "conflicting_duplicate";

/// What [`TruthRecorder::finish`] reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TruthSummary {
    /// Identifies the run in the truth tables.
    pub run_id: String,
    /// Distinct valid events recorded.
    pub events: u64,
    /// Bad records recorded.
    pub rejects: u64,
    /// SHA-256 (hex) of the canonical lines in `seq` order.
    pub checksum_sha256: String,
}

/// Records the truth of a run into any combination of JSON Lines, Parquet and PostgreSQL, and
/// always into the checksum.
pub struct TruthRecorder {
    run_id: String,
    seq: u64,
    events: u64,
    rejects: u64,
    hasher: Sha256,
    line: Vec<u8>,
    jsonl: Option<BufWriter<File>>,
    parquet: Option<parquet::ParquetTruth>,
    postgres: Option<postgres::PostgresTruth>,
}

impl TruthRecorder {
    /// A recorder that only computes the checksum; add sinks with the `with_*` methods.
    pub fn new(run_id: impl Into<String>) -> TruthRecorder {
        TruthRecorder {
            run_id: run_id.into(),
            seq: 0,
            events: 0,
            rejects: 0,
            hasher: Sha256::new(),
            line: Vec::with_capacity(512),
            jsonl: None,
            parquet: None,
            postgres: None,
        }
    }

    /// Also writes the canonical lines to `path` (created or truncated).
    pub fn with_jsonl(mut self, path: &Path) -> anyhow::Result<TruthRecorder> {
        let file = File::create(path)
            .with_context(|| format!("creating truth file {}", path.display()))?;
        self.jsonl = Some(BufWriter::with_capacity(1 << 20, file));
        Ok(self)
    }

    /// Also writes `truth_events.parquet` and `truth_rejects.parquet` into `dir`.
    pub fn with_parquet(mut self, dir: &Path) -> anyhow::Result<TruthRecorder> {
        self.parquet = Some(parquet::ParquetTruth::create(dir, &self.run_id)?);
        Ok(self)
    }

    /// Also streams the rows to PostgreSQL through `sink` (see [`postgres::connect`]).
    pub fn with_postgres(mut self, sink: postgres::PostgresTruth) -> TruthRecorder {
        self.postgres = Some(sink);
        self
    }

    /// Records `record` if it belongs in the truth (everything but exact duplicates).
    pub fn observe(&mut self, record: &Record) -> anyhow::Result<()> {
        match &record.kind {
            RecordKind::Valid(event) => self.event(event, &record.payload),
            RecordKind::Duplicate(_) => Ok(()),
            RecordKind::ConflictingDuplicate(event) => self.reject(RejectRow {
                seq: self.seq,
                class: CONFLICTING_DUPLICATE,
                event_id: Some(event.event_id),
                trip_id: Some(&event.trip_id),
                key: record.key.as_deref(),
                payload: &record.payload,
            }),
            RecordKind::Poison(reason) => self.reject(RejectRow {
                seq: self.seq,
                class: reason.as_str(),
                event_id: None,
                trip_id: record
                    .key
                    .as_deref()
                    .and_then(|k| std::str::from_utf8(k).ok()),
                key: record.key.as_deref(),
                payload: &record.payload,
            }),
        }
    }

    /// `canonical` is `event.to_json()`, already rendered as the record's payload.
    fn event(&mut self, event: &Event, canonical: &[u8]) -> anyhow::Result<()> {
        debug_assert_eq!(canonical, event.to_json().as_slice());
        let seq = self.seq;
        self.line.clear();
        event_line(&mut self.line, seq, canonical);
        self.commit_line()?;
        if let Some(p) = &mut self.parquet {
            p.event(seq, event)?;
        }
        if let Some(pg) = &mut self.postgres {
            pg.event(seq, event)?;
        }
        self.events += 1;
        Ok(())
    }

    fn reject(&mut self, row: RejectRow<'_>) -> anyhow::Result<()> {
        self.line.clear();
        reject_line(&mut self.line, &row);
        self.commit_line()?;
        if let Some(p) = &mut self.parquet {
            p.reject(&row)?;
        }
        if let Some(pg) = &mut self.postgres {
            pg.reject(&row)?;
        }
        self.rejects += 1;
        Ok(())
    }

    /// Hashes the current line, writes it to the JSON Lines file, advances `seq`.
    fn commit_line(&mut self) -> anyhow::Result<()> {
        self.hasher.update(&self.line);
        if let Some(w) = &mut self.jsonl {
            w.write_all(&self.line).context("writing the truth file")?;
        }
        self.seq += 1;
        Ok(())
    }

    /// Flushes every sink and returns the counts and checksum. The PostgreSQL sink's last batch
    /// is handed to its writer task; await [`postgres::PostgresWriter::finish`] for it to land.
    pub fn finish(self) -> anyhow::Result<TruthSummary> {
        if let Some(mut w) = self.jsonl {
            w.flush().context("flushing the truth file")?;
            w.into_inner()
                .map_err(|e| e.into_error())
                .context("flushing the truth file")?
                .sync_all()
                .context("syncing the truth file")?;
        }
        if let Some(p) = self.parquet {
            p.finish()?;
        }
        if let Some(pg) = self.postgres {
            pg.finish()?;
        }
        Ok(TruthSummary {
            run_id: self.run_id,
            events: self.events,
            rejects: self.rejects,
            checksum_sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

/// Appends the canonical line of a truth event; `canonical` is its `Event::to_json()`.
pub fn event_line(out: &mut Vec<u8>, seq: u64, canonical: &[u8]) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{{\"seq\":{seq},\"truth\":\"event\",\"event\":");
    out.extend_from_slice(canonical);
    out.extend_from_slice(b"}\n");
}

/// Appends the canonical line of a truth reject.
pub fn reject_line(out: &mut Vec<u8>, row: &RejectRow<'_>) {
    let event_id = row.event_id.map_or_else(
        || "null".to_owned(),
        |id| format!("\"{}\"", id.hyphenated()),
    );
    let key = row
        .key
        .map_or_else(|| "null".to_owned(), |k| format!("\"{}\"", hex::encode(k)));
    out.extend_from_slice(
        format!(
            "{{\"seq\":{},\"truth\":\"reject\",\"class\":\"{}\",\"event_id\":{event_id},\"key_hex\":{key},\"payload_hex\":\"",
            row.seq, row.class
        )
        .as_bytes(),
    );
    out.extend_from_slice(hex::encode(row.payload).as_bytes());
    out.extend_from_slice(b"\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::config::TrafficConfig;
    use crate::generate::plan::plan;

    #[test]
    fn checksum_is_the_sha256_of_the_jsonl_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.jsonl");
        let cfg = TrafficConfig {
            trips: 300,
            ..TrafficConfig::default()
        };
        let mut truth = TruthRecorder::new("t").with_jsonl(&path).unwrap();
        for r in plan(&cfg) {
            truth.observe(&r).unwrap();
        }
        let summary = truth.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(summary.checksum_sha256, hex::encode(Sha256::digest(&bytes)));
        let lines: Vec<serde_json::Value> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, summary.events + summary.rejects);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l["seq"], i as u64);
        }
        assert!(summary.events > 1_000);
    }

    #[test]
    fn reject_line_shape() {
        let mut out = Vec::new();
        let row = RejectRow {
            seq: 3,
            class: "not_json",
            event_id: None,
            trip_id: None,
            key: Some(b"k"),
            payload: b"{",
        };
        reject_line(&mut out, &row);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"seq\":3,\"truth\":\"reject\",\"class\":\"not_json\",\"event_id\":null,\"key_hex\":\"6b\",\"payload_hex\":\"7b\"}\n"
        );
    }
}
