//! Cost of the log redactor (`recon_pipeline::redactor`) per line: the search alone, and an INFO
//! event formatted and written through the redacting writer (stderr; send it to /dev/null).
//!
//! ```text
//! cargo bench -p recon-pipeline --bench redaction 2>/dev/null
//! ```
//!
//! Eleven secrets (ten 30-byte keys and one 5-byte password, about 50 patterns with their
//! encodings); a 201-byte line without a secret, the usual case.

use std::time::Instant;

use recon_pipeline::redactor::{self, Redactor};

const LINES: u32 = 1_000_000;

fn secrets() -> Vec<String> {
    (0..10)
        .map(|i| format!("secret-value-number-{i}/x+yz"))
        .chain(["recon".to_string()])
        .collect()
}

fn main() {
    let r = Redactor::new(secrets()).expect("searchable secrets");
    let line = b"2026-12-06T02:25:48.188503Z  INFO recon_pipeline::job: checkpoint complete: 4096 records, 4001 events, 12 duplicates, 3 rejected, trips 2048 checkpoint=5 job=\"recon-prod\" table=\"ledger_events\" files=3\n";
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..LINES {
        bytes += r.redact(std::hint::black_box(line)).len();
    }
    let search_ns = t.elapsed().as_nanos() as f64 / f64::from(LINES);
    assert_eq!(bytes, line.len() * LINES as usize, "nothing to redact");

    redactor::remember(secrets());
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(redactor::RedactingStderr)
        .init();
    let t = Instant::now();
    for i in 0..LINES {
        tracing::info!(
            checkpoint = i,
            job = "recon-prod",
            table = "ledger_events",
            "checkpoint complete: 4096 records, 4001 events, 12 duplicates, 3 rejected"
        );
    }
    let event_ns = t.elapsed().as_nanos() as f64 / f64::from(LINES);
    println!(
        "{{\"search_ns_per_line\": {search_ns:.0}, \"info_event_ns_per_line\": {event_ns:.0}, \"line_bytes\": {}}}",
        line.len()
    );
}
