//! `[alerts]` and `[current_balances]`: configuration of the optional exactly-once outputs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// `[alerts]`: trip status transitions to a Kafka topic, exactly once (off by default).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Turns the alerts output on. Needs `delivery = "exactly-once"` and a real broker.
    pub enabled: bool,
    /// Topic the alerts go to (created with `partitions` partitions if missing).
    pub topic: String,
    /// Partitions of the alerts topic when the job creates it.
    pub partitions: i32,
    /// Statuses whose entry or exit raises an alert: any of `OPEN`, `BALANCED`, `DISCREPANCY`.
    pub on_statuses: Vec<String>,
    /// Kafka `transactional.id`; empty = `recon-<job_id>-alerts`. Stable per job: a new
    /// instance fences the old one's producer with it. Also names the consumer group whose
    /// committed offsets record which checkpoint's alerts are in the topic.
    pub transactional_id: String,
    /// Kafka `transaction.timeout.ms` (the broker aborts a transaction left open this long).
    pub transaction_timeout_ms: u64,
    /// Bound on each transactional call (init, commit, offsets).
    pub call_timeout_ms: u64,
    /// Extra producer properties (the `source.properties` security settings are inherited).
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for RawAlerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAlerts")
            .field("enabled", &self.enabled)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("on_statuses", &self.on_statuses)
            .field("transactional_id", &self.transactional_id)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("call_timeout_ms", &self.call_timeout_ms)
            .field("properties", &crate::secrets::RedactedMap(&self.properties))
            .finish()
    }
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts {
            enabled: false,
            topic: "recon.alerts".into(),
            partitions: 1,
            on_statuses: vec!["DISCREPANCY".into()],
            transactional_id: String::new(),
            transaction_timeout_ms: 60_000,
            call_timeout_ms: 30_000,
            properties: BTreeMap::new(),
        }
    }
}

impl RawAlerts {
    /// Checks the section (its numeric keys are checked by [`crate::config::ranges`]); returns the watched statuses as the names the state uses.
    pub fn validate(&self) -> Result<Vec<&'static str>, ConfigError> {
        if self.topic.trim().is_empty() {
            return Err(ConfigError(
                "alerts.topic is empty; name the alerts topic".into(),
            ));
        }
        let mut out = Vec::new();
        for s in &self.on_statuses {
            let name = match s.to_ascii_uppercase().as_str() {
                "OPEN" => "OPEN",
                "BALANCED" => "BALANCED",
                "DISCREPANCY" => "DISCREPANCY",
                _ => {
                    return Err(ConfigError(format!(
                        "alerts.on_statuses has {s:?}; use OPEN, BALANCED or DISCREPANCY"
                    )));
                }
            };
            out.push(name);
        }
        if out.is_empty() {
            return Err(ConfigError(
                "alerts.on_statuses is empty; list at least one status, e.g. [\"DISCREPANCY\"]"
                    .into(),
            ));
        }
        Ok(out)
    }
}

/// Producer properties the alerts output sets itself, refused in `[alerts.properties]`:
/// `(name, why the job owns it, what to set instead)`. They are applied after the job's own, so
/// each would silently override it.
pub const OWNED_PRODUCER_PROPERTIES: &[(&str, &str, &str)] = &[
    (
        "bootstrap.servers",
        "the producer connects to source.brokers",
        "set source.brokers",
    ),
    (
        "metadata.broker.list",
        "the producer connects to source.brokers",
        "set source.brokers",
    ),
    (
        "transactional.id",
        "it fences an older instance of this job and names the group recording alert progress",
        "set alerts.transactional_id",
    ),
    (
        "enable.idempotence",
        "transactions need an idempotent producer",
        "remove it",
    ),
    (
        "transaction.timeout.ms",
        "the job bounds its transactions",
        "set alerts.transaction_timeout_ms",
    ),
    ("acks", "an idempotent producer needs acks=all", "remove it"),
    (
        "request.required.acks",
        "an idempotent producer needs acks=all",
        "remove it",
    ),
];

/// `[current_balances]`: every trip's current balance in a PostgreSQL table, upserted in one
/// transaction per checkpoint with a progress row (off by default).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCurrentBalances {
    /// Turns the PostgreSQL current-balance output on. Needs `delivery = "exactly-once"`.
    pub enabled: bool,
    /// `postgres://USER:PASS@HOST:PORT/DB`; empty = the catalog's database when it is PostgreSQL.
    pub url: String,
    /// Table of current balances (created if missing), keyed by `(job_id, trip_id)`.
    pub table: String,
    /// Table of progress rows (created if missing), keyed by `(job_id, kafka_partition)`.
    pub progress_table: String,
    /// Rows per upsert statement.
    pub batch_rows: usize,
}

impl std::fmt::Debug for RawCurrentBalances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCurrentBalances")
            .field("enabled", &self.enabled)
            .field("url", &crate::secrets::redact_url(&self.url))
            .field("table", &self.table)
            .field("progress_table", &self.progress_table)
            .field("batch_rows", &self.batch_rows)
            .finish()
    }
}

impl Default for RawCurrentBalances {
    fn default() -> Self {
        RawCurrentBalances {
            enabled: false,
            url: String::new(),
            table: "recon_current_balances".into(),
            progress_table: "recon_sink_progress".into(),
            batch_rows: 5000,
        }
    }
}

impl RawCurrentBalances {
    /// Checks the section (numeric keys: [`crate::config::ranges`]); `catalog_uri` is the fallback database.
    pub fn validate(&self, catalog_uri: &str) -> Result<String, ConfigError> {
        let url = if self.url.trim().is_empty() {
            catalog_uri.to_string()
        } else {
            self.url.clone()
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError(format!(
                "current_balances.url {:?} is not a PostgreSQL URL; set postgres://USER:PASS@HOST:PORT/DB \
                 (it defaults to catalog.uri, which is not PostgreSQL here)",
                crate::config::redact_url(&url)
            )));
        }
        for (key, name) in [
            ("current_balances.table", &self.table),
            ("current_balances.progress_table", &self.progress_table),
        ] {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(ConfigError(format!(
                    "{key} = {name:?} must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63 characters)"
                )));
            }
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, DeliveryMode, RawConfig};

    fn resolve(f: impl FnOnce(&mut RawConfig)) -> Result<Config, String> {
        let mut raw = RawConfig::default();
        f(&mut raw);
        Config::resolve(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn outputs_are_off_by_default() {
        let c = resolve(|_| {}).unwrap();
        assert!(c.alerts_watch.is_none() && c.current_balances_url.is_none());
    }

    #[test]
    fn bad_output_settings_name_the_key() {
        let e = resolve(|r| {
            r.alerts.enabled = true;
            r.delivery = DeliveryMode::AtLeastOnce;
        })
        .unwrap_err();
        assert!(
            e.contains("alerts.enabled") && e.contains("exactly-once"),
            "{e}"
        );
        let e = resolve(|r| {
            r.alerts.enabled = true;
            r.alerts.on_statuses = vec!["LATE".into()];
        })
        .unwrap_err();
        assert!(
            e.contains("alerts.on_statuses") && e.contains("LATE"),
            "{e}"
        );
        let e = resolve(|r| {
            r.alerts.enabled = true;
            r.source.brokers = "mock".into();
        })
        .unwrap_err();
        assert!(e.contains("mock cluster"), "{e}");
        // The default catalog is SQLite: the balances table needs a PostgreSQL URL.
        let e = resolve(|r| r.current_balances.enabled = true).unwrap_err();
        assert!(e.contains("current_balances.url"), "{e}");
        let e = resolve(|r| {
            r.current_balances.enabled = true;
            r.current_balances.url = "postgres://u:hunter2@h/db".into();
            r.current_balances.table = "Bad-Name".into();
        })
        .unwrap_err();
        assert!(e.contains("current_balances.table"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let mut raw = RawConfig::default();
        raw.current_balances.url = "postgres://u:hunter2@h/db".into();
        raw.alerts
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        let shown = format!("{raw:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn statuses_are_case_insensitive() {
        let c = resolve(|r| {
            r.alerts.enabled = true;
            r.alerts.on_statuses = vec!["discrepancy".into(), "Balanced".into()];
        })
        .unwrap();
        assert_eq!(c.alerts_watch.unwrap(), vec!["DISCREPANCY", "BALANCED"]);
    }
}
