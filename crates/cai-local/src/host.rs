//! The one process-wide platform call `cai` makes outside the model: it
//! lives here because this crate is the only one of `cai` allowed `unsafe`.

/// Keeps glibc's allocator from holding on to memory a run has freed.
///
/// glibc serves blocks of 128 KiB and more with their own `mmap`, returned
/// to the kernel on `free`; but the first time such a block is freed, it
/// raises that threshold to the block's size (up to 32 MiB), and the heap's
/// trim threshold to twice that. From then on, blocks below the new size
/// come from the heaps and stay resident after they are freed. The first
/// large free of a `cai generate` run is the duplicate-id check's Bloom
/// filter (1.2 MB per million prompts), so the bigger the prompts file, the
/// more of the run's transient buffers glibc kept: 1,000,000 prompts held
/// ~9 MB more than 10,000 for the whole run (issue 26; cai's
/// docs/engine.md, "Memory and disk"). Setting the threshold explicitly
/// turns the adjustment off and keeps glibc's default. Large blocks are
/// rare on the request path (a 10,000-prompt run makes about 30 `mmap`
/// calls either way), so this costs no CPU. Call it first thing in `main`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_mmap_threshold() {
    const DEFAULT_THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any other thread exists. Its result (0 on failure) needs no handling:
    // the run is correct either way, only its memory would grow.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, DEFAULT_THRESHOLD);
    }
}

/// Other allocators do not adjust a threshold this way.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_mmap_threshold() {}
