//! Test lakehouses built directly, without running the streaming job: a SQLite catalog with
//! the product's tables, and commits that look exactly like the pipeline's (same row builders
//! from `recon_pipeline::sink::rows`, same snapshot-summary stamp). Tests plant discrepancies
//! by editing the rows before they are committed; the benchmark builds its large day here.
//!
//! [`simulate`] plays the pipeline's decisions over records placed on Kafka (decode, first seen
//! wins, conflicting versions dead-lettered, per-trip fold), so a fixture is consistent with a
//! truth built from the same records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use iceberg::Catalog;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use recon_pipeline::checkpoint::protocol::stamp_properties;
use recon_pipeline::config::{Config, RawCatalog, RawConfig, RawSource};
use recon_pipeline::ids::{CheckpointId, Generation, JobId};
use recon_pipeline::lakehouse::{ensure_tables, open_catalog, table_ident};
use recon_pipeline::sink::rows::{BalanceRows, LedgerRows, Rejected, RejectedRows};
use recon_pipeline::sink::writer::{TableTarget, TableWriter};
use recon_schemas::balance::{TripBalance, fold};
use recon_schemas::decode::{self, Limits};
use recon_schemas::event::Event;

use batch_verify::error::{Result, VerifyError};
use batch_verify::row::Position;
use batch_verify::spill::hash_bytes;

/// One record as placed on Kafka.
#[derive(Clone, Debug)]
pub struct Placed {
    /// Where it sits.
    pub position: Position,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
}

/// Places records on `partitions` partitions in order: the hint if given, else a hash of the
/// key (keyless records go to partition 0); offsets count up from 0 per partition.
pub fn place(
    records: impl IntoIterator<Item = (Option<i32>, Option<Vec<u8>>, Vec<u8>)>,
    partitions: i32,
) -> Vec<Placed> {
    let mut next: HashMap<i32, i64> = HashMap::new();
    records
        .into_iter()
        .map(|(hint, key, payload)| {
            let p = hint.unwrap_or_else(|| {
                key.as_deref()
                    .map_or(0, |k| (hash_bytes(k) % partitions.max(1) as u64) as i32)
            });
            let o = next.entry(p).or_insert(0);
            let position = Position::new(p, *o);
            *o += 1;
            Placed {
                position,
                key,
                payload,
            }
        })
        .collect()
}

/// What the pipeline would write for some placed records, in one checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Simulated {
    /// Accepted events with their positions.
    pub ledger: Vec<(Event, Position)>,
    /// Dead letters.
    pub rejected: Vec<Rejected>,
    /// Trips with a conflicting duplicate.
    pub conflicted: HashSet<String>,
    /// Per partition, `(start, end, records)`.
    pub offsets: BTreeMap<i32, (i64, i64, u64)>,
}

impl Simulated {
    /// The balance rows of the ledger as it now stands (one per trip), in the partition that
    /// owns each trip.
    pub fn balances(&self) -> Vec<(String, TripBalance, i32)> {
        let mut trips: BTreeMap<&str, Vec<(&Event, Position)>> = BTreeMap::new();
        for (e, p) in &self.ledger {
            trips.entry(&e.trip_id).or_default().push((e, *p));
        }
        trips
            .into_iter()
            .filter_map(|(trip, mut evs)| {
                evs.sort_by_key(|(_, p)| *p);
                let mut b = fold(evs.iter().map(|(e, _)| *e))?;
                b.conflicting_duplicate |= self.conflicted.contains(trip);
                Some((trip.to_string(), b, evs[0].1.partition))
            })
            .collect()
    }
}

/// Plays the pipeline's decisions over `placed`, in order.
pub fn simulate(placed: &[Placed]) -> Simulated {
    let limits = Limits::default();
    let mut seen: HashMap<uuid::Uuid, u64> = HashMap::new();
    let mut out = Simulated::default();
    for r in placed {
        let p = r.position;
        let e = out
            .offsets
            .entry(p.partition)
            .or_insert((p.offset, p.offset, 0));
        e.1 = p.offset + 1;
        e.2 += 1;
        match decode::decode(r.key.as_deref(), &r.payload, &limits) {
            Ok(ev) => match seen.get(&ev.event_id) {
                Some(fp) if *fp == ev.fingerprint() => {}
                Some(_) => {
                    out.conflicted.insert(ev.trip_id.clone());
                    out.rejected.push(Rejected {
                        partition: p.partition,
                        offset: p.offset,
                        key: r.key.clone(),
                        payload: r.payload.clone(),
                        reason: "conflicting_duplicate",
                        error: "conflicting duplicate".into(),
                        event_id: Some(ev.event_id.hyphenated().to_string()),
                        trip_id: Some(ev.trip_id.clone()),
                    });
                }
                None => {
                    seen.insert(ev.event_id, ev.fingerprint());
                    out.ledger.push((ev, p));
                }
            },
            Err(e) => {
                let (event_id, trip_id) = decode::salvage_ids(&r.payload, &limits);
                out.rejected.push(Rejected {
                    partition: p.partition,
                    offset: p.offset,
                    key: r.key.clone(),
                    payload: r.payload.clone(),
                    reason: e.reason().as_str(),
                    error: e.to_string(),
                    event_id,
                    trip_id,
                });
            }
        }
    }
    out
}

/// A lakehouse under a directory: SQLite catalog and local warehouse.
pub struct Lakehouse {
    /// Configuration pointing at it (and at `brokers` / `topic` for a Kafka truth).
    pub cfg: Config,
    /// The catalog.
    pub catalog: Arc<dyn Catalog>,
}

fn lake_err<'a>(op: &'static str, table: &'a str) -> impl Fn(iceberg::Error) -> VerifyError + 'a {
    move |e| VerifyError::lakehouse(op, table, e)
}

impl Lakehouse {
    /// Creates the catalog and every product table under `dir`.
    pub async fn create(dir: &Path, brokers: &str, topic: &str) -> Result<Lakehouse> {
        let raw = RawConfig {
            job_id: "fixture".into(),
            source: RawSource {
                brokers: brokers.into(),
                topic: topic.into(),
                ..RawConfig::default().source
            },
            catalog: RawCatalog {
                uri: format!("sqlite://{}/catalog.db?mode=rwc", dir.display()),
                warehouse: format!("file://{}/warehouse", dir.display()),
                ..RawConfig::default().catalog
            },
            ..RawConfig::default()
        };
        let cfg = Config::resolve(raw).map_err(|e| VerifyError::Options {
            option: "fixture",
            message: e.to_string(),
        })?;
        let catalog = open_catalog(&cfg)
            .await
            .map_err(|e| VerifyError::lakehouse("open", "catalog", e))?;
        ensure_tables(catalog.as_ref(), &cfg.catalog.namespace)
            .await
            .map_err(|e| VerifyError::lakehouse("ensure_tables", "recon", e))?;
        Ok(Lakehouse { cfg, catalog })
    }

    /// Commits one checkpoint to all three tables, as the pipeline does: each table one
    /// `fast_append` stamped with job, generation, checkpoint and `offsets`.
    pub async fn commit(
        &self,
        checkpoint_id: u64,
        ledger: &[(Event, Position)],
        rejected: &[Rejected],
        balances: &[(String, TripBalance, i32)],
        offsets: &BTreeMap<i32, (i64, i64, u64)>,
    ) -> Result<()> {
        let offsets_json = serde_json::to_string(
            &offsets
                .iter()
                .map(|(p, (s, e, n))| {
                    (
                        p.to_string(),
                        serde_json::json!({"start": s, "end": e, "records": n}),
                    )
                })
                .collect::<serde_json::Map<_, _>>(),
        )
        .unwrap_or_default();
        let job = JobId::new(self.cfg.job_id.as_str()).map_err(|e| VerifyError::Options {
            option: "fixture",
            message: e,
        })?;
        let props = stamp_properties(
            &job,
            Generation(1),
            CheckpointId(checkpoint_id),
            CheckpointId(checkpoint_id),
            offsets_json,
        );
        let now = Utc::now();
        let ck = i64::try_from(checkpoint_id).unwrap_or(i64::MAX);
        for name in ["ledger_events", "rejected_events", "trip_balances"] {
            let ident = table_ident(&self.cfg, name);
            let table = self
                .catalog
                .load_table(&ident)
                .await
                .map_err(lake_err("load_table", name))?;
            let target = TableTarget::new(table.clone(), 1, 256 * 1024 * 1024)
                .map_err(lake_err("writer", name))?;
            let schema = target.arrow.clone();
            let rows_err =
                |e: recon_pipeline::sink::rows::RowsError| VerifyError::lakehouse("rows", name, e);
            let mut batches = Vec::new();
            const CHUNK: usize = 65_536;
            match name {
                "ledger_events" => {
                    for chunk in ledger.chunks(CHUNK) {
                        let mut rows = LedgerRows::default();
                        for (e, p) in chunk {
                            rows.push(e.clone(), p.partition, p.offset)
                                .map_err(rows_err)?;
                        }
                        batches.push(rows.take_batch(&schema, ck, now).map_err(rows_err)?);
                    }
                }
                "rejected_events" => {
                    for chunk in rejected.chunks(CHUNK) {
                        let mut rows = RejectedRows::default();
                        for r in chunk {
                            rows.push(r.clone());
                        }
                        batches.push(rows.take_batch(&schema, ck, now).map_err(rows_err)?);
                    }
                }
                _ => {
                    for chunk in balances.chunks(CHUNK) {
                        let mut rows = BalanceRows::default();
                        for (t, b, p) in chunk {
                            rows.push(t.clone(), b.clone(), *p);
                        }
                        batches.push(rows.take_batch(&schema, ck, now).map_err(rows_err)?);
                    }
                }
            }
            let mut files = Vec::new();
            if !batches.is_empty() {
                let mut w = TableWriter::open(
                    &target,
                    format!("fixture-c{checkpoint_id}-{}", uuid::Uuid::new_v4()),
                )
                .await
                .map_err(lake_err("open writer", name))?;
                for b in batches {
                    w.write(b).await.map_err(lake_err("write", name))?;
                }
                files = w.close().await.map_err(lake_err("close", name))?;
            }
            let tx = Transaction::new(&table);
            let tx = tx
                .fast_append()
                .add_data_files(files)
                .set_snapshot_properties(props.clone())
                .apply(tx)
                .map_err(lake_err("commit", name))?;
            tx.commit(self.catalog.as_ref())
                .await
                .map_err(lake_err("commit", name))?;
        }
        Ok(())
    }
}
