//! What the tests and benchmarks measure of the `cai` process they run
//! against the fake: its peak resident memory, read from Linux's `/proc`.
//! Kept here, in the dev-only crate, so the measuring code never ships in
//! `cai` itself.

/// Peak resident memory (`VmHWM` in `/proc/<pid>/status`) of a live
/// process, in KiB; `None` once the process is gone or off Linux.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_has_a_peak_resident_size() {
        let kib = super::peak_rss_kib(std::process::id()).expect("VmHWM");
        assert!(kib > 0);
    }

    #[test]
    fn a_process_that_does_not_exist_has_none() {
        assert_eq!(super::peak_rss_kib(u32::MAX), None);
    }
}
