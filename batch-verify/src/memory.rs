//! Peak resident memory of this process, for the report and the benchmark.

/// Peak resident set size in bytes (`getrusage`), 0 where unavailable.
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own; no other memory is touched.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0;
    }
    // Linux reports kilobytes.
    u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_rss_is_plausible() {
        let rss = super::peak_rss_bytes();
        assert!(rss > 1024 * 1024 && rss < 64 * 1024 * 1024 * 1024, "{rss}");
    }
}
