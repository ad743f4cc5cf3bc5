//! The `cai` binary: everything is in the library ([`cai::commands::main`]).

fn main() -> std::process::ExitCode {
    cai::commands::main(std::env::args().collect())
}
