//! Process figures the tools report beside their results (peak memory).

/// Peak resident set size of this process in MiB (Linux `VmHWM`), NaN where unavailable.
/// Reported by `bench` and `quantize` so memory claims are measured, not estimated.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
