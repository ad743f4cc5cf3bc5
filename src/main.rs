//! The `cai` binary: everything is in the library ([`cai::commands::main`]).

fn main() -> std::process::ExitCode {
    // glibc's adaptive mmap threshold would keep a large run's freed
    // buffers resident (issue 26); see the function's doc.
    cai_local::host::keep_mmap_threshold();
    cai::commands::main(std::env::args().collect())
}
