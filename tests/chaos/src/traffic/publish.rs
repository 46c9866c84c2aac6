//! A publisher that rides out broker outages without ever sending a record twice, and reports
//! where each record landed.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};
use recon_pipeline::generate::Record;

/// Delivery outcomes of a publisher.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    /// `(partition, offset)` of each acknowledged record, by its index in the publish.
    positions: std::sync::Mutex<Vec<Option<(i32, i64)>>>,
}

struct Counting(Arc<Deliveries>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, i: usize) {
        match result {
            Ok(m) => {
                self.0.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = self.0.positions.lock().expect("lock").get_mut(i) {
                    *slot = Some((m.partition(), m.offset()));
                }
            }
            Err((e, m)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.0.first_error.lock().expect("lock");
                if first.is_none() {
                    *first = Some(format!("{e} (partition {})", m.partition()));
                }
            }
        }
    }
}

/// What a publish did.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// Records acknowledged.
    pub acked: u64,
    /// `(partition, offset)` of each record, in publish order.
    pub positions: Vec<(i32, i64)>,
    /// Time taken.
    pub elapsed: Duration,
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records in {:.1}s",
            self.acked,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Publishes `records` with an idempotent producer that waits (up to `deadline`) for the broker
/// to come back rather than failing: librdkafka retries each batch without duplicating it. Any
/// record not acknowledged is an error (the scenario then stops: the harness never re-sends).
pub fn publish(
    brokers: &str,
    topic: &str,
    records: &[Record],
    deadline: Duration,
) -> anyhow::Result<Published> {
    let started = Instant::now();
    let d = Arc::new(Deliveries::default());
    *d.positions.lock().expect("lock") = vec![None; records.len()];
    let producer: BaseProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", deadline.as_millis().to_string())
        .set("message.max.bytes", "1000000")
        .set("reconnect.backoff.max.ms", "1000")
        .create_with_context(Counting(d.clone()))
        .context("creating the producer")?;
    for (i, r) in records.iter().enumerate() {
        let mut rec: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, i).payload(&r.payload[..]);
        if let Some(k) = &r.key {
            rec = rec.key(&k[..]);
        }
        if let Some(p) = r.partition_hint {
            rec = rec.partition(p);
        }
        let mut rec = Some(rec);
        while let Some(next) = rec.take() {
            match producer.send(next) {
                Ok(()) => {}
                Err((e, back)) => {
                    ensure!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "producing to {topic}: {e}"
                    );
                    ensure!(
                        started.elapsed() < deadline,
                        "the producer queue stayed full for {deadline:?}"
                    );
                    rec = Some(back);
                    producer.poll(Duration::from_millis(20));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    while producer.in_flight_count() > 0 {
        ensure!(
            started.elapsed() < deadline + Duration::from_secs(5),
            "{} records still unacknowledged after {deadline:?}",
            producer.in_flight_count()
        );
        producer.poll(Duration::from_millis(50));
    }
    let failed = d.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "{failed} of {} records were not delivered (first: {}); the harness never re-sends, the scenario is void",
            records.len(),
            d.first_error
                .lock()
                .expect("lock")
                .clone()
                .unwrap_or_default()
        );
    }
    let acked = d.ok.load(Ordering::Relaxed);
    ensure!(
        acked == records.len() as u64,
        "{acked} acknowledged of {}",
        records.len()
    );
    let positions = std::mem::take(&mut *d.positions.lock().expect("lock"))
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .context("a record was acknowledged without its position")?;
    Ok(Published {
        acked,
        positions,
        elapsed: started.elapsed(),
    })
}
