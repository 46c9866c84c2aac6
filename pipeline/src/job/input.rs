//! The topic id the newest checkpoint recorded against the one the broker reports now: a
//! start-time check that needs no record read back, run before anything is claimed.

use crate::checkpoint::log::CheckpointLog;
use crate::config::Config;
use crate::source::{Source, SourceError};

use super::{JobEnv, JobError};

/// Stops with [`SourceError::NotTheSavedInput`] (operator needed, nothing written) when the
/// newest checkpoint recorded a topic id and the topic now has another one.
pub(super) async fn check_recorded_topic_id(
    cfg: &Config,
    env: &JobEnv,
    source: &Source,
) -> Result<(), JobError> {
    let log = CheckpointLog::new(env.store.clone(), &env.store_prefix, cfg.job_id.clone());
    let Some(head) = log.head().await? else {
        return Ok(());
    };
    let (Some(recorded), Some(now)) = (head.manifest.topic_id.as_ref(), source.topic_id()) else {
        return Ok(());
    };
    if *recorded == now {
        return Ok(());
    }
    let topic = &cfg.source.topic;
    let message = format!(
        "topic {topic:?} is not the input checkpoint {} consumed: it was deleted and recreated (topic id {recorded} in the checkpoint, {now} now), so the saved offsets point at other records; nothing was consumed. If the topic now holds the input this job should read, run `recon-pipeline accept-topic-reset --config <file> --reason \"...\" --yes` (it keeps the job's state and reads every partition that does not match from its earliest offset); otherwise restore topic {topic:?} and restart.",
        head.entry.checkpoint_id
    );
    tracing::error!(topic = %topic, checkpoint = %head.entry.checkpoint_id, "{message}");
    Err(SourceError::NotTheSavedInput { message }.into())
}
