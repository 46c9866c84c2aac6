//! The files truth: the generator's exports, `truth_events.parquet` + `truth_rejects.parquet`
//! and/or JSON Lines (`*.jsonl`, one `{"seq","truth":"event"|"reject",...}` object per line),
//! in a local directory or under any `object_store` URL (`s3://bucket/prefix`, configured from
//! the standard `AWS_*` environment). Remote objects are copied to the spill directory first.
//!
//! Only events whose `occurred_at` falls in the day are pushed; dead letters are dated later
//! from their payloads.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use recon_schemas::decode::{self, Limits};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::TruthSink;
use crate::error::{Result, VerifyError};
use crate::row::{EventRow, extra_digest, type_code_of};

/// Longest JSON Lines line accepted (a 64 KiB payload is 128 KiB in hex).
const LINE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most files read from one location.
const FILES_MAX: usize = 10_000;

fn err(message: impl ToString) -> VerifyError {
    VerifyError::truth("files", message)
}

/// Reads every truth file at `url` (a file, a directory, or an object-store prefix). The
/// parsing runs on a blocking thread; `sink` travels there and back.
pub async fn read(url: &str, scratch: &Path, mut sink: TruthSink) -> Result<TruthSink> {
    let files = locate(url, scratch).await?;
    if files.is_empty() {
        return Err(err(format!("no *.parquet or *.jsonl truth files at {url}")));
    }
    tokio::task::spawn_blocking(move || {
        read_files(&files, &mut sink)?;
        Ok(sink)
    })
    .await
    .map_err(|e| err(format!("reader thread: {e}")))?
}

/// Reads local truth files into `sink`.
pub fn read_files(files: &[PathBuf], sink: &mut TruthSink) -> Result<()> {
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name.ends_with(".jsonl") {
            read_jsonl(f, sink)?;
        } else if name.contains("reject") {
            read_parquet(f, sink, rejects_batch)?;
        } else {
            read_parquet(f, sink, events_batch)?;
        }
    }
    Ok(())
}

/// Local paths of the truth files, copying remote objects into `scratch`.
pub async fn locate(url: &str, scratch: &Path) -> Result<Vec<PathBuf>> {
    let is_truth = |n: &str| n.ends_with(".parquet") || n.ends_with(".jsonl");
    let local = url
        .strip_prefix("file://")
        .or((!url.contains("://")).then_some(url));
    if let Some(path) = local {
        let path = Path::new(path);
        if path.is_file() {
            return Ok(vec![path.to_path_buf()]);
        }
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        for entry in entries.take(FILES_MAX) {
            let p = entry.map_err(|e| err(e.to_string()))?.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(is_truth) {
                out.push(p);
            }
        }
        out.sort();
        return Ok(out);
    }
    let parsed = url::Url::parse(url).map_err(|e| err(format!("{url}: {e}")))?;
    let options = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v));
    let (store, prefix) =
        object_store::parse_url_opts(&parsed, options).map_err(|e| err(format!("{url}: {e}")))?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    let listed: Vec<_> = futures::StreamExt::take(store.list(Some(&prefix)), FILES_MAX)
        .try_collect()
        .await
        .map_err(|e| err(format!("listing {url}: {e}")))?;
    let mut out = Vec::new();
    for meta in listed {
        let Some(name) = meta.location.filename().map(|n| n.to_string()) else {
            continue;
        };
        if !is_truth(&name) {
            continue;
        }
        let target = scratch.join(format!("truth-{}-{name}", out.len()));
        let mut file = tokio::fs::File::create(&target)
            .await
            .map_err(|e| err(format!("{}: {e}", target.display())))?;
        let mut body = store
            .get(&meta.location)
            .await
            .map_err(|e| err(format!("{}: {e}", meta.location)))?
            .into_stream();
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| err(format!("{}: {e}", meta.location)))?
        {
            file.write_all(&chunk)
                .await
                .map_err(|e| err(e.to_string()))?;
        }
        file.flush().await.map_err(|e| err(e.to_string()))?;
        out.push(target);
    }
    out.sort();
    Ok(out)
}

fn read_parquet(
    path: &Path,
    sink: &mut TruthSink,
    f: fn(&RecordBatch, &mut TruthSink) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(16 * 1024).build())
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    for batch in reader {
        let batch = batch.map_err(|e| err(format!("{}: {e}", path.display())))?;
        f(&batch, sink).map_err(|e| err(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a Arc<dyn Array>> {
    b.column_by_name(name)
        .ok_or_else(|| err(format!("column {name} is missing")))
}

fn strings(b: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let a = column(b, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| err(format!("column {name} is not a string")))?;
    Ok((0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
        .collect())
}

fn binaries(b: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<u8>>>> {
    let c = column(b, name)?;
    if let Some(a) = c.as_binary_opt::<i32>() {
        return Ok((0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i).to_vec()))
            .collect());
    }
    let a = c
        .as_binary_opt::<i64>()
        .ok_or_else(|| err(format!("column {name} is not binary")))?;
    Ok((0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i).to_vec()))
        .collect())
}

fn events_batch(b: &RecordBatch, sink: &mut TruthSink) -> Result<()> {
    let seq = column(b, "seq")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| err("seq is not int64"))?;
    let amount = column(b, "amount")?
        .as_primitive_opt::<Decimal128Type>()
        .ok_or_else(|| err("amount is not decimal"))?;
    let time = column(b, "occurred_at")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| err("occurred_at is not a microsecond timestamp"))?;
    let version = column(b, "schema_version")?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| err("schema_version is not int32"))?;
    let (ids, types, trips, currencies) = (
        strings(b, "event_id")?,
        strings(b, "event_type")?,
        strings(b, "trip_id")?,
        strings(b, "currency")?,
    );
    let opt = [
        strings(b, "rider_id")?,
        strings(b, "driver_id")?,
        strings(b, "payment_id")?,
        strings(b, "payout_id")?,
    ];
    for i in 0..b.num_rows() {
        sink.record()?;
        if !sink.day.contains_micros(time.value(i)) {
            continue;
        }
        let id = ids[i].as_deref().unwrap_or_default();
        let event_id = Uuid::parse_str(id)
            .map_err(|_| err(format!("row {i}: event_id {id:?} is not a UUID")))?;
        let row = EventRow {
            event_id,
            event_type: type_code_of(types[i].as_deref().unwrap_or_default()),
            trip_id: trips[i].clone().unwrap_or_default(),
            amount: i64::try_from(amount.value(i))
                .map_err(|_| err(format!("event {id}: amount out of range")))?,
            currency: currencies[i].clone().unwrap_or_default(),
            occurred_at_us: time.value(i),
            extra: extra_digest(
                [
                    opt[0][i].as_deref(),
                    opt[1][i].as_deref(),
                    opt[2][i].as_deref(),
                    opt[3][i].as_deref(),
                ],
                version.value(i),
            ),
        };
        sink.event(row, None, (0, seq.value(i)))?;
    }
    Ok(())
}

fn rejects_batch(b: &RecordBatch, sink: &mut TruthSink) -> Result<()> {
    let (classes, ids, trips) = (
        strings(b, "class")?,
        strings(b, "event_id")?,
        strings(b, "trip_id")?,
    );
    let (keys, payloads) = (binaries(b, "record_key")?, binaries(b, "payload")?);
    for i in 0..b.num_rows() {
        sink.record()?;
        let payload = payloads[i].as_deref().unwrap_or_default();
        let class = classes[i].as_deref().unwrap_or_default();
        sink.reject(
            class,
            ids[i].clone(),
            trips[i].clone(),
            keys[i].as_deref(),
            payload,
            None,
            None,
        )?;
    }
    Ok(())
}

fn read_jsonl(path: &Path, sink: &mut TruthSink) -> Result<()> {
    let file = File::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let limits = Limits::default();
    for n in 1.. {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
        if read == 0 {
            return Ok(());
        }
        if line.len() > LINE_BYTES_MAX {
            return Err(err(format!(
                "{}:{n}: line of {} bytes, over {LINE_BYTES_MAX}",
                path.display(),
                line.len()
            )));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        sink.record()?;
        let bad = |m: String| err(format!("{}:{n}: {m}", path.display()));
        let v: serde_json::Value = serde_json::from_slice(&line).map_err(|e| bad(e.to_string()))?;
        let seq = v["seq"].as_i64().ok_or_else(|| bad("no seq".into()))?;
        match v["truth"].as_str() {
            Some("event") => {
                let bytes = serde_json::to_vec(&v["event"]).map_err(|e| bad(e.to_string()))?;
                let ev = decode::decode(None, &bytes, &limits)
                    .map_err(|e| bad(format!("truth event invalid: {e}")))?;
                if !sink.day.contains(ev.occurred_at) {
                    continue;
                }
                let row =
                    EventRow::from_event(&ev).ok_or_else(|| bad("amount out of range".into()))?;
                sink.event(row, None, (0, seq))?;
            }
            Some("reject") => {
                let hex_field = |name: &str| -> Result<Option<Vec<u8>>> {
                    match v[name].as_str() {
                        None => Ok(None),
                        Some(h) => hex::decode(h)
                            .map(Some)
                            .map_err(|e| bad(format!("{name}: {e}"))),
                    }
                };
                let key = hex_field("key_hex")?;
                let payload = hex_field("payload_hex")?.unwrap_or_default();
                let class = v["class"].as_str().unwrap_or_default().to_string();
                let event_id = v["event_id"].as_str().map(str::to_string);
                let (_, trip_id) = decode::salvage_ids(&payload, &limits);
                sink.reject(
                    &class,
                    event_id,
                    trip_id,
                    key.as_deref(),
                    &payload,
                    None,
                    None,
                )?;
            }
            other => return Err(bad(format!("unknown truth kind {other:?}"))),
        }
    }
    Ok(())
}
