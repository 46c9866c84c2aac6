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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::ids::JobId;
pub use crate::secrets::redact_url;
use crate::secrets::{self, RedactedMap};

/// One day in milliseconds.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The shortest orphan age the configuration accepts: a younger unreferenced file may be one a
/// running writer is about to commit. (`maintain --force-min-age` goes below it, once.)
pub const ORPHAN_AGE_MIN: Duration = Duration::from_secs(3600);

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

/// Where a partition without a checkpointed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest retained record.
    Earliest,
    /// Only records produced after the job starts.
    Latest,
}

/// `[source]`: the Kafka topic to read.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Bootstrap servers, `host:port[,host:port]`, or `mock` for librdkafka's in-process
    /// mock cluster (demo only: it does not honour transactions).
    pub brokers: String,
    /// Topic of trip money events, keyed by trip id.
    pub topic: String,
    /// Partitions this instance owns; empty means every partition of the topic.
    pub partitions: Vec<i32>,
    /// Where a partition with no checkpointed offset starts: `earliest` or `latest`.
    pub start_from: StartFrom,
    /// Most records handed from the consumer thread to the job in one batch.
    pub poll_batch_records_max: usize,
    /// Batches buffered between the consumer thread and the job (back-pressure bound).
    pub queue_batches_max: usize,
    /// Progress watchdog: a partition with records waiting that delivers none for this long
    /// (time blocked on the job does not count) makes the source recreate its Kafka consumer;
    /// a second stall stops the job as transient (exit 1) so the supervisor restarts it.
    /// Within 10000..=86400000.
    pub stall_timeout_ms: u64,
    /// Extra librdkafka properties (TLS, SASL...). Values are never logged.
    pub properties: BTreeMap<String, String>,
    /// SASL password (librdkafka `sasl.password`). Prefer `sasl_password_file` or the
    /// environment variable `RECON__SOURCE__SASL_PASSWORD` (read verbatim) to writing it here.
    pub sasl_password: String,
    /// File holding the SASL password (one trailing newline ignored), e.g. a mounted secret.
    pub sasl_password_file: String,
}

impl std::fmt::Debug for RawSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSource")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("start_from", &self.start_from)
            .field("poll_batch_records_max", &self.poll_batch_records_max)
            .field("queue_batches_max", &self.queue_batches_max)
            .field("stall_timeout_ms", &self.stall_timeout_ms)
            .field("properties", &RedactedMap(&self.properties))
            .field("sasl_password", &redacted_if_set(&self.sasl_password))
            .field("sasl_password_file", &self.sasl_password_file)
            .finish()
    }
}

fn redacted_if_set(v: &str) -> &str {
    if v.is_empty() { "" } else { secrets::REDACTED }
}

/// `[catalog]`: the Iceberg catalog and warehouse.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    /// Catalog name shared with Spark/Trino/pyiceberg (`catalog_name` column of the SQL catalog).
    pub name: String,
    /// SQL catalog database: `sqlite://path?mode=rwc` or `postgres://user:pass@host:port/db`.
    pub uri: String,
    /// Warehouse root: `file:///abs/path` or `s3://bucket/prefix`. A relative path is allowed.
    pub warehouse: String,
    /// Extra catalog/FileIO properties, e.g. `s3.endpoint`, `s3.access-key-id`, `s3.region`.
    pub properties: BTreeMap<String, String>,
    /// Namespace of the tables.
    pub namespace: String,
    /// Password of the PostgreSQL catalog database, put into `uri` (which then names only the
    /// user). Prefer `password_file` or `RECON__CATALOG__PASSWORD` (read verbatim).
    pub password: String,
    /// File holding the catalog database password (one trailing newline ignored).
    pub password_file: String,
}

impl std::fmt::Debug for RawCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCatalog")
            .field("name", &self.name)
            .field("uri", &redact_url(&self.uri))
            .field("warehouse", &self.warehouse)
            .field("properties", &RedactedMap(&self.properties))
            .field("namespace", &self.namespace)
            .field("password", &redacted_if_set(&self.password))
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// `[checkpoint]`: the checkpoint store and cadence.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    /// Store root: a directory path, `file:///abs/path` or `s3://bucket/prefix`.
    pub store: String,
    /// Options for an S3 store (`aws_endpoint`, `aws_allow_http`, `aws_region`...); credentials
    /// come from the standard AWS environment when not given here.
    pub store_options: BTreeMap<String, String>,
    /// Time between barriers.
    pub interval_ms: u64,
    /// Write a full state file every this many checkpoints; deltas in between.
    pub full_state_every: u32,
    /// Completed checkpoints kept beyond what recovery needs (for operators and rewinds).
    pub keep_last: usize,
}

impl std::fmt::Debug for RawCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCheckpoint")
            .field("store", &self.store)
            .field("store_options", &RedactedMap(&self.store_options))
            .field("interval_ms", &self.interval_ms)
            .field("full_state_every", &self.full_state_every)
            .field("keep_last", &self.keep_last)
            .finish()
    }
}

/// `[commit]`: when checkpoints are published to Iceberg.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommit {
    /// Commit after this many completed checkpoints...
    pub every_checkpoints: u32,
    /// ...or as soon as pending files reach this many bytes...
    pub pending_bytes_max: u64,
    /// ...or when the oldest uncommitted checkpoint is this old.
    pub interval_ms_max: u64,
    /// Attempts per table commit before the job stops (conflicts and unknown outcomes).
    pub attempts_max: u32,
    /// Time allowed for one catalog call before its outcome is treated as unknown.
    pub timeout_ms: u64,
}

/// `[sink]`: Parquet writers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// Rows buffered per table before an Arrow batch goes to the Parquet writer.
    pub batch_rows: usize,
    /// Target size of a data file; larger files roll over.
    pub file_size_bytes_target: usize,
    /// ZSTD level of Parquet pages (1 is as small as 3 and faster on this data).
    pub zstd_level: i32,
}

/// `[state]`: per-trip state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// Largest accepted payload; larger records are dead-lettered.
    pub payload_bytes_max: usize,
}

/// `[observability]`: metrics and health endpoints.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObservability {
    /// Address serving `/metrics`, `/healthz`, `/readyz` (e.g. `0.0.0.0:9464`); empty = off.
    pub listen: String,
}

/// `[maintenance]`: defaults of `recon-pipeline maintain` (snapshot expiry, orphan files).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    /// Snapshots older than this are expired (the job's newest marker is always kept).
    pub expire_older_than_ms: u64,
    /// Newest snapshots of each table kept whatever their age; at least 1.
    pub retain_last: usize,
    /// Unreferenced files are deleted only when older than this; at least one hour.
    pub orphan_older_than_ms: u64,
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
    pub alerts: crate::outputs::config::RawAlerts,
    /// Optional exactly-once PostgreSQL current-balance table.
    pub current_balances: crate::outputs::config::RawCurrentBalances,
    /// Table maintenance.
    pub maintenance: RawMaintenance,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            job_id: "recon".into(),
            delivery: DeliveryMode::ExactlyOnce,
            source: RawSource {
                brokers: "127.0.0.1:19092".into(),
                topic: "recon.trip-events".into(),
                partitions: Vec::new(),
                start_from: StartFrom::Earliest,
                poll_batch_records_max: 4096,
                queue_batches_max: 16,
                stall_timeout_ms: 120_000,
                properties: BTreeMap::new(),
                sasl_password: String::new(),
                sasl_password_file: String::new(),
            },
            catalog: RawCatalog {
                name: "recon".into(),
                uri: "sqlite://lakehouse/catalog.db?mode=rwc".into(),
                warehouse: "lakehouse/warehouse".into(),
                properties: BTreeMap::new(),
                namespace: recon_schemas::tables::NAMESPACE.into(),
                password: String::new(),
                password_file: String::new(),
            },
            checkpoint: RawCheckpoint {
                store: "lakehouse/checkpoints".into(),
                store_options: BTreeMap::new(),
                interval_ms: 10_000,
                full_state_every: 50,
                keep_last: 10,
            },
            commit: RawCommit {
                every_checkpoints: 1,
                pending_bytes_max: 512 * 1024 * 1024,
                interval_ms_max: 60_000,
                attempts_max: 10,
                timeout_ms: 30_000,
            },
            sink: RawSink {
                batch_rows: 8192,
                file_size_bytes_target: 128 * 1024 * 1024,
                zstd_level: 1,
            },
            state: RawState {
                payload_bytes_max: 64 * 1024,
            },
            observability: RawObservability {
                listen: String::new(),
            },
            alerts: Default::default(),
            current_balances: Default::default(),
            maintenance: RawMaintenance {
                expire_older_than_ms: 7 * DAY_MS,
                retain_last: 1,
                orphan_older_than_ms: 3 * DAY_MS,
            },
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
    pub alerts: crate::outputs::config::RawAlerts,
    /// Statuses watched by the alerts output; `None` when `[alerts]` is off.
    pub alerts_watch: Option<Vec<&'static str>>,
    /// `[current_balances]` as written.
    pub current_balances: crate::outputs::config::RawCurrentBalances,
    /// Database URL of the current-balance output; `None` when it is off.
    pub current_balances_url: Option<String>,
    /// Defaults of `maintain` (validated: `retain_last >= 1`, orphan age >= [`ORPHAN_AGE_MIN`]).
    pub maintenance: RawMaintenance,
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
    /// Reads `path` (if given), applies `RECON__*` environment overrides, and resolves.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError(format!(
                    "file {} does not exist; pass an existing --config FILE",
                    p.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(p));
        }
        fig = fig.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .lowercase(true)
                .filter(|k| !secrets::VERBATIM_ENV_KEYS.iter().any(|v| k == *v)),
        );
        // Secrets verbatim: figment would parse `123` into a number (and print it in the type
        // error) or strip quotes.
        for key in secrets::VERBATIM_ENV_KEYS {
            let var = secrets::env_var_name(key);
            match std::env::var(&var) {
                Ok(v) => fig = fig.merge(Serialized::default(key, v)),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ConfigError(format!("{var} is not valid UTF-8")));
                }
            }
        }
        let raw: RawConfig = fig.extract().map_err(|e| ConfigError(figment_message(e)))?;
        Config::resolve(raw)
    }

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
        if raw.source.poll_batch_records_max == 0 || raw.source.queue_batches_max == 0 {
            return err(
                "source.poll_batch_records_max and source.queue_batches_max must be at least 1"
                    .into(),
            );
        }
        if !(10_000..=86_400_000).contains(&raw.source.stall_timeout_ms) {
            return err(format!(
                "source.stall_timeout_ms = {} must be within 10000..=86400000 (10 s to one day)",
                raw.source.stall_timeout_ms
            ));
        }
        if raw.checkpoint.interval_ms < 10 {
            return err(format!(
                "checkpoint.interval_ms = {} is below 10 ms; use 10000 for production",
                raw.checkpoint.interval_ms
            ));
        }
        if raw.commit.every_checkpoints == 0 || raw.commit.attempts_max == 0 {
            return err(
                "commit.every_checkpoints and commit.attempts_max must be at least 1".into(),
            );
        }
        if raw.checkpoint.full_state_every == 0 {
            return err("checkpoint.full_state_every must be at least 1".into());
        }
        if !(1..=22).contains(&raw.sink.zstd_level) {
            return err(format!(
                "sink.zstd_level = {} must be within 1..=22",
                raw.sink.zstd_level
            ));
        }
        if raw.sink.batch_rows == 0 {
            return err("sink.batch_rows must be at least 1".into());
        }
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
        let m = &raw.maintenance;
        if m.retain_last == 0 {
            return err("maintenance.retain_last must be at least 1 (the current snapshot)".into());
        }
        if Duration::from_millis(m.orphan_older_than_ms) < ORPHAN_AGE_MIN {
            return err(format!(
                "maintenance.orphan_older_than_ms = {} is below one hour ({}): a younger unreferenced file may be one a writer is about to commit; use 259200000 (3 days)",
                m.orphan_older_than_ms,
                ORPHAN_AGE_MIN.as_millis()
            ));
        }
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
        Ok(Config {
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

/// One line per problem, naming the key, without figment's multi-line noise. The value of a
/// secret key (a password, a URL, a secret-looking property) is never repeated, and a TOML syntax
/// error loses its snippet of the offending line (which may hold a secret).
fn figment_message(e: figment::Error) -> String {
    use figment::error::Kind;
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let secret = e
                .path
                .iter()
                .any(|p| p == "uri" || secrets::is_secret_name(p));
            let mut what = match &e.kind {
                Kind::Message(m) => without_snippet(m),
                Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if secret => {
                    format!("invalid value (not shown), expected {expected}")
                }
                Kind::UnknownVariant(..) if secret => "invalid value (not shown)".to_string(),
                k => k.to_string(),
            };
            if e.path.len() > 2
                && e.path[1] == "properties"
                && matches!(e.kind, Kind::InvalidType(figment::error::Actual::Map, _))
            {
                what.push_str(
                    "; a dotted property name cannot be set through RECON__ variables (`.` nests): \
                     set it in the file, or use source.sasl_password / sasl_password_file",
                );
            }
            if key.is_empty() {
                what
            } else {
                format!("key `{key}`: {what}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A TOML parse error without the quoted source lines (`3 | password = "...`) and carets.
fn without_snippet(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| {
            let gutter = l
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !l.is_empty() && !gutter.starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
