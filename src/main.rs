use clap::Parser;

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // cai.toml, .env and CAI_* variables, applied before clap sees the
    // arguments (and before any thread starts: .env sets variables).
    let prepared = match cai::settings::prepare(argv.clone()) {
        Ok(p) => p,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("cai: error: {line}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    let cli = cai::cli::Cli::parse_from(prepared.argv);
    cai::main_with(cli, argv)
}
