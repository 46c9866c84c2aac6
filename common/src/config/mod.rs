//! Job configuration: a TOML file, every key overridable by environment variable.
//!
//! Two stages, as ripgrep does it: [`RawConfig`] is the file's form (serde, unknown keys
//! refused, `_ms` units at the edge); [`Config`] is the resolved form (durations, validated
//! ids, parsed URLs) and is the only one runtime code sees.
//!
//! Environment: `RECON__<SECTION>__<KEY>=value` overrides `[section] key`, e.g.
//! `RECON__SOURCE__BROKERS=127.0.0.1:19092` or `RECON__JOB_ID=payments-eu`. Secrets (SASL and
//! database passwords) have their own keys, read verbatim from the environment or from files, and
//! never appear in `Debug` or messages: see [`crate::secrets`].

mod catalog;
mod checkpoint;
pub mod fleet;
mod load;
mod maintenance;
pub mod outputs;
pub mod ranges;
mod sink;
mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::catalog::RawCatalog;
pub use self::checkpoint::{RawCheckpoint, RawCommit};
pub use self::maintenance::{ORPHAN_AGE_MIN, RawMaintenance, RawObservability};
pub use self::sink::{RawSink, RawState};
pub use self::source::{OWNED_CONSUMER_PROPERTIES, RawSource, StartFrom};
use crate::ids::JobId;
pub use crate::secrets::redact_url;
use crate::secrets::{self, RedactedMap};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "RECON__";

/// A configuration problem, naming the key and what to do.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Delivery guarantee of the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Checkpoint first, then commit with markers; replay never duplicates (default).
    ExactlyOnce,
    /// Commit files first, then checkpoint offsets: a crash in between replays and duplicates.
    AtLeastOnce,
    /// Checkpoint offsets first, then commit: a crash in between loses the interval.
    AtMostOnce,
}

/// The configuration file's form.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Job identity: names the checkpoint log and stamps commits. Two jobs never share one.
    pub job_id: String,
    /// `exactly-once` (default), `at-least-once` or `at-most-once`.
    pub delivery: DeliveryMode,
    /// Kafka source.
    pub source: RawSource,
    /// Iceberg catalog.
    pub catalog: RawCatalog,
    /// Checkpoints.
    pub checkpoint: RawCheckpoint,
    /// Commits.
    pub commit: RawCommit,
    /// Writers.
    pub sink: RawSink,
    /// State.
    pub state: RawState,
    /// Metrics and health.
    pub observability: RawObservability,
    /// Optional exactly-once alerts topic.
    pub alerts: crate::config::outputs::RawAlerts,
    /// Optional exactly-once PostgreSQL current-balance table.
    pub current_balances: crate::config::outputs::RawCurrentBalances,
    /// Table maintenance.
    pub maintenance: RawMaintenance,
    /// Workers and committer (off by default).
    pub fleet: crate::config::fleet::RawFleet,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            job_id: "recon".into(),
            delivery: DeliveryMode::ExactlyOnce,
            source: RawSource::default(),
            catalog: RawCatalog::default(),
            checkpoint: RawCheckpoint::default(),
            commit: RawCommit::default(),
            sink: RawSink::default(),
            state: RawState::default(),
            observability: RawObservability::default(),
            alerts: Default::default(),
            current_balances: Default::default(),
            maintenance: RawMaintenance::default(),
            fleet: Default::default(),
        }
    }
}

/// Resolved configuration: what runtime code reads. Its `Debug` hides every secret.
#[derive(Clone)]
pub struct Config {
    /// Job identity.
    pub job_id: JobId,
    /// Delivery guarantee.
    pub delivery: DeliveryMode,
    /// Kafka source (validated); the SASL password, wherever it came from, is in
    /// `properties["sasl.password"]` and `sasl_password*` are empty.
    pub source: RawSource,
    /// Catalog with absolute warehouse URL; the database password, wherever it came from, is in
    /// `uri` and `password*` are empty.
    pub catalog: RawCatalog,
    /// Checkpoint store root, resolved: a local directory or an URL.
    pub checkpoint_store: StoreLocation,
    /// Options of an S3 checkpoint store.
    pub checkpoint_store_options: BTreeMap<String, String>,
    /// Time between barriers.
    pub checkpoint_interval: Duration,
    /// Full state file cadence.
    pub full_state_every: u32,
    /// Extra checkpoints retained.
    pub keep_last: usize,
    /// Commit cadence and limits.
    pub commit: RawCommit,
    /// Writers.
    pub sink: RawSink,
    /// State.
    pub state: RawState,
    /// Address of the metrics/health server, if any.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[alerts]` as written (see `alerts_watch` for the validated statuses).
    pub alerts: crate::config::outputs::RawAlerts,
    /// Statuses watched by the alerts output; `None` when `[alerts]` is off.
    pub alerts_watch: Option<Vec<&'static str>>,
    /// `[current_balances]` as written.
    pub current_balances: crate::config::outputs::RawCurrentBalances,
    /// Database URL of the current-balance output; `None` when it is off.
    pub current_balances_url: Option<String>,
    /// Defaults of `maintain` (validated: `retain_last >= 1`, orphan age >= [`ORPHAN_AGE_MIN`]).
    pub maintenance: RawMaintenance,
    /// `[fleet]` (validated: with tasks, exactly-once, no `source.partitions`, no optional
    /// outputs, a job id short enough for task ids).
    pub fleet: crate::config::fleet::RawFleet,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("job_id", &self.job_id)
            .field("delivery", &self.delivery)
            .field("source", &self.source)
            .field("catalog", &self.catalog)
            .field("checkpoint_store", &self.checkpoint_store)
            .field(
                "checkpoint_store_options",
                &RedactedMap(&self.checkpoint_store_options),
            )
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("full_state_every", &self.full_state_every)
            .field("keep_last", &self.keep_last)
            .field("commit", &self.commit)
            .field("sink", &self.sink)
            .field("state", &self.state)
            .field("metrics_listen", &self.metrics_listen)
            .field("alerts", &self.alerts)
            .field(
                "current_balances_url",
                &self.current_balances_url.as_deref().map(redact_url),
            )
            .field("maintenance", &self.maintenance)
            .field("fleet", &self.fleet)
            .finish()
    }
}

/// Where checkpoints live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory (created if missing).
    Local(PathBuf),
    /// An object-store URL such as `s3://bucket/prefix`.
    Url(String),
}

impl Config {
    /// Validates and resolves the raw form.
    pub fn resolve(raw: RawConfig) -> Result<Config, ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        let job_id = JobId::new(&raw.job_id).map_err(|e| ConfigError(format!("job_id: {e}")))?;
        if raw.source.brokers.trim().is_empty() {
            return err(
                "source.brokers is empty; set host:port of a Kafka broker, or `mock`".into(),
            );
        }
        if raw.source.topic.trim().is_empty() {
            return err("source.topic is empty; name the topic of trip events".into());
        }
        ranges::check(&raw)?;
        source::refuse_owned(
            "source.properties",
            &raw.source.properties,
            source::OWNED_CONSUMER_PROPERTIES,
        )?;
        source::refuse_owned(
            "alerts.properties",
            &raw.alerts.properties,
            crate::config::outputs::OWNED_PRODUCER_PROPERTIES,
        )?;
        let uri = &raw.catalog.uri;
        if !(uri.starts_with("sqlite:")
            || uri.starts_with("postgres://")
            || uri.starts_with("postgresql://"))
        {
            return err(format!(
                "catalog.uri {:?} is not a SQL catalog URL; use sqlite://PATH?mode=rwc or postgres://USER:PASS@HOST:PORT/DB",
                redact_url(uri)
            ));
        }
        let mut catalog = raw.catalog.clone();
        catalog.warehouse = absolute_location(&catalog.warehouse, "catalog.warehouse")?;
        catalog.password.clear();
        catalog.password_file.clear();
        if let Some(pw) = secrets::value_or_file(
            "catalog.password",
            &raw.catalog.password,
            &raw.catalog.password_file,
        )
        .map_err(ConfigError)?
        {
            if !(uri.starts_with("postgres://") || uri.starts_with("postgresql://")) {
                return err(format!(
                    "catalog.password is set but catalog.uri {:?} is not a postgres:// URL; drop the password or use PostgreSQL",
                    redact_url(uri)
                ));
            }
            catalog.uri =
                secrets::with_url_password("catalog.password", uri, &pw).map_err(ConfigError)?;
        }
        let mut source = raw.source.clone();
        source.sasl_password.clear();
        source.sasl_password_file.clear();
        if let Some(pw) = secrets::value_or_file(
            "source.sasl_password",
            &raw.source.sasl_password,
            &raw.source.sasl_password_file,
        )
        .map_err(ConfigError)?
        {
            if source.properties.contains_key("sasl.password") {
                return err(
                    "source.properties.\"sasl.password\" and source.sasl_password(_file) are both set; keep one (sasl_password_file is the safer place)".into(),
                );
            }
            source.properties.insert("sasl.password".into(), pw);
        }
        let checkpoint_store = match raw.checkpoint.store.split_once("://") {
            Some(("file", rest)) => StoreLocation::Local(PathBuf::from(rest)),
            Some(("s3" | "memory", _)) => StoreLocation::Url(raw.checkpoint.store.clone()),
            Some((scheme, _)) => {
                return err(format!(
                    "checkpoint.store scheme {scheme:?} is not supported; use a directory, file:///abs/path or s3://bucket/prefix"
                ));
            }
            None => StoreLocation::Local(PathBuf::from(&raw.checkpoint.store)),
        };
        let metrics_listen = match raw.observability.listen.trim() {
            "" => None,
            a => Some(a.parse().map_err(|e| {
                ConfigError(format!("observability.listen {a:?} is not HOST:PORT ({e}); e.g. 0.0.0.0:9464, or empty to disable"))
            })?),
        };
        let outputs_need_eo = |key: &str| {
            ConfigError(format!(
                "{key}.enabled = true needs delivery = \"exactly-once\" (the output is tied to the checkpoint)"
            ))
        };
        let alerts_watch = if raw.alerts.enabled {
            if raw.delivery != DeliveryMode::ExactlyOnce {
                return Err(outputs_need_eo("alerts"));
            }
            if raw.source.brokers == "mock" {
                return err("alerts.enabled = true needs a real broker: librdkafka's mock cluster does not honour transactions".into());
            }
            Some(raw.alerts.validate()?)
        } else {
            None
        };
        let current_balances_url = if raw.current_balances.enabled {
            if raw.delivery != DeliveryMode::ExactlyOnce {
                return Err(outputs_need_eo("current_balances"));
            }
            Some(raw.current_balances.validate(&catalog.uri)?)
        } else {
            None
        };
        if raw.fleet.enabled() {
            fleet_fits(&raw)?;
        }
        Ok(Config {
            fleet: raw.fleet,
            alerts: raw.alerts,
            alerts_watch,
            current_balances: raw.current_balances,
            current_balances_url,
            metrics_listen,
            job_id,
            delivery: raw.delivery,
            source,
            catalog,
            checkpoint_store,
            checkpoint_store_options: raw.checkpoint.store_options,
            checkpoint_interval: Duration::from_millis(raw.checkpoint.interval_ms),
            full_state_every: raw.checkpoint.full_state_every,
            keep_last: raw.checkpoint.keep_last,
            commit: raw.commit,
            sink: raw.sink,
            state: raw.state,
            maintenance: raw.maintenance,
        })
    }

    /// Whether the catalog database is PostgreSQL (else SQLite).
    pub fn catalog_is_postgres(&self) -> bool {
        self.catalog.uri.starts_with("postgres")
    }
}

/// What a fleet needs of the rest of the configuration (each refusal says what to change).
fn fleet_fits(raw: &RawConfig) -> Result<(), ConfigError> {
    let no = |m: &str| {
        Err(ConfigError(format!(
            "fleet.tasks = {}: {m}",
            raw.fleet.tasks
        )))
    };
    if raw.delivery != DeliveryMode::ExactlyOnce {
        return no(
            "a fleet commits through its committer, which is exactly-once only; set delivery = \"exactly-once\" or fleet.tasks = 0",
        );
    }
    if !raw.source.partitions.is_empty() {
        return no("the fleet assigns partitions to tasks (p mod tasks); remove source.partitions");
    }
    if raw.source.brokers == "mock" {
        return no(
            "workers share tasks through Kafka's group coordinator, which librdkafka's mock cluster does not run with read_committed transactions; use a real broker",
        );
    }
    if raw.job_id.len() > crate::ids::JOB_ID_LEN_MAX - crate::ids::TASK_SUFFIX_LEN {
        return no(&format!(
            "job_id {:?} is too long for task ids (`<job_id>.t0000`); at most {} characters",
            raw.job_id,
            crate::ids::JOB_ID_LEN_MAX - crate::ids::TASK_SUFFIX_LEN
        ));
    }
    Ok(())
}

/// Turns a relative warehouse path into a `file://` URL; leaves URLs alone.
fn absolute_location(value: &str, key: &str) -> Result<String, ConfigError> {
    if value.contains("://") {
        return Ok(value.trim_end_matches('/').to_string());
    }
    let p = Path::new(value);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| ConfigError(format!("{key}: cannot resolve {value:?}: {e}")))?
            .join(p)
    };
    Ok(format!("file://{}", abs.display())
        .trim_end_matches('/')
        .to_string())
}

#[cfg(test)]
mod tests;
