use clap::Parser;

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // cai.toml, .env and CAI_* variables, applied before clap sees the
    // arguments (and before any thread starts: .env sets variables).
    // Help, version, completions and the man page work whatever the
    // config holds: they are how a user finds out what is wrong with it.
    let bare = argv
        .iter()
        .skip(1)
        .any(|a| matches!(a.as_str(), "--help" | "-h" | "--version" | "-V"))
        || matches!(
            argv.get(1).map(String::as_str),
            Some("help" | "completions" | "man")
        );
    let prepared = match cai::config::settings::prepare(argv.clone()) {
        Ok(p) => p,
        Err(_) if bare => cai::config::settings::Prepared { argv: argv.clone() },
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("cai: error: {line}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    let cli = cai::cli::Cli::parse_from(prepared.argv);
    let json = cai::commands::json_output(&cli.command);
    if let Err(e) = cai::logging::init(cli.log_level, json) {
        if json {
            let event =
                serde_json::json!({ "event": "error", "exit_code": 2, "message": e.to_string() });
            eprintln!("{event}");
        } else {
            eprintln!("cai: error: {e}");
        }
        return std::process::ExitCode::from(2);
    }
    cai::main_with(cli, argv)
}
