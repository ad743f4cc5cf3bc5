use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cai::cli::Cli::parse();
    cai::main_with(cli, std::env::args().collect())
}
