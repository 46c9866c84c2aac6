//! The job's side of the background fold of its state chain (`checkpoint::fold`).

use super::Job;

impl Job {
    /// At a barrier, before the chain is extended: takes a finished fold in (a running one is
    /// left running; the barrier never waits for it).
    pub(super) async fn take_compaction(&mut self) {
        let done = match self.compaction.take_finished().await {
            Ok(Some(done)) => done,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "state chain fold failed; the chain stays as it is and the next checkpoint tries again");
                return;
            }
        };
        if crate::checkpoint::fold::install(&mut self.state_chain, &mut self.state_sha256, &done) {
            self.report.compactions += 1;
            tracing::info!(
                files = done.replaces.len(),
                path = %done.path,
                bytes = done.bytes,
                took_ms = done.took.as_millis() as u64,
                chain = self.state_chain.len(),
                "state chain folded"
            );
        }
    }

    /// After a checkpoint counts: folds the chain in the background once it holds
    /// `full_state_every` deltas and no fold is running.
    pub(super) fn start_compaction(&mut self) {
        self.compaction.start(
            &self.log,
            &self.state_chain,
            &self.state_sha256,
            self.last,
            self.cfg.full_state_every as usize,
        );
    }
}
