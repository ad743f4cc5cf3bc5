//! The `cai` process that benchmarks run against the fake: where its
//! binary is, and what they measure of it (its peak resident memory, read
//! from Linux's `/proc`). Kept here, in the dev-only crate, so the
//! measuring code never ships in `cai` itself.

use std::path::{Path, PathBuf};

/// The `cai` binary a benchmark example runs: `$CAI_BIN`, else the one
/// built beside the example (`target/<profile>/examples/bench_x` →
/// `target/<profile>/cai`).
pub fn cai_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAI_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("cai"))
        .expect("target dir")
}

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
