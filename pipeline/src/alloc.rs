//! The process allocator's options (mimalloc v3, the global allocator of `src/main.rs`).
//!
//! By default mimalloc v3 returns freed memory to the OS one second (`purge_delay`, 1000 ms)
//! after it becomes free. The job's large transient buffers (a state-chain fold, a cold
//! merge's output, a restart's restored copy) are freed and allocated again within that
//! second, so resident memory carried several of them at once: in the 8-day bounded-state
//! bench at ~1.06M open trips the peak was 1,282 MiB with the default and 863 MiB with
//! immediate purging (same binary and machine; user time 231 s -> 226 s, system time
//! 29 s -> 43 s: about +4 % CPU). [`tune`] purges immediately unless the operator set the
//! option through mimalloc's own environment variable.

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t, mi_option_use_numa_nodes};

/// `mi_option_purge_delay`: the crate does not name it for v3; in mimalloc's `mi_option_e` it
/// is the option before `use_numa_nodes` (the test pins its default, so a renumbering fails).
const PURGE_DELAY: mi_option_t = mi_option_use_numa_nodes - 1;

/// mimalloc v3's default purge delay, in milliseconds.
pub const DEFAULT_PURGE_DELAY_MS: i64 = 1000;

/// Sets mimalloc to return freed memory to the OS at once. `MIMALLOC_PURGE_DELAY` (or its
/// legacy name `MIMALLOC_RESET_DELAY`), when set, wins. Call it first thing in `main`.
pub fn tune() {
    let unset = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"]
        .iter()
        .all(|n| std::env::var_os(n).is_none());
    if unset {
        // SAFETY: setting an option only stores an integer in mimalloc's option table.
        unsafe { mi_option_set(PURGE_DELAY, 0) };
    }
}

/// mimalloc's purge delay now, in milliseconds.
// `c_long` is `i64` here, `i32` on some platforms.
#[allow(clippy::useless_conversion)]
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reading an option has no precondition.
    i64::from(unsafe { mi_option_get(PURGE_DELAY) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option is the one meant: mimalloc v3's default (1 s) before, immediate after.
    #[test]
    fn tune_purges_at_once() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        assert_eq!(
            purge_delay_ms(),
            DEFAULT_PURGE_DELAY_MS,
            "not mimalloc v3's purge delay: did the option numbering change?"
        );
        tune();
        assert_eq!(purge_delay_ms(), 0);
    }
}
