//! One file per command; [`run`] maps a parsed command line to its command
//! and the command's result to an exit code and the lines the user sees.

pub mod dry_run;
pub mod generate;
pub mod label;
pub mod merge;
pub mod model;
pub mod models;
pub mod optimize;
pub mod render;
pub mod validate;

use std::process::ExitCode;

use crate::cli::{self, Cli, Command};
use crate::config::generate::GenerateConfig;
use crate::config::label::LabelConfig;
use crate::error::RunError;

/// The program: the settings (`cai.toml`, `.env`, `CAI_*`) folded into the
/// arguments, the arguments parsed, logging set up, the command run;
/// returns the process exit code.
pub fn main(argv: Vec<String>) -> ExitCode {
    let cli = match with_settings(&argv) {
        Ok(args) => <Cli as clap::Parser>::parse_from(args),
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("cai: error: {line}");
            }
            return ExitCode::from(2);
        }
    };
    let json = json_output(&cli.command);
    if let Err(e) = crate::logging::init(cli.log_level, json) {
        print_error(&RunError::from(e), json);
        return ExitCode::from(2);
    }
    run(cli, argv)
}

/// The arguments with the values of `cai.toml`, `.env` and `CAI_*`
/// variables appended, before clap sees them (and before any thread
/// starts: `.env` sets variables). Help, version, completions and the man
/// page work whatever the config holds: they are how a user finds out what
/// is wrong with it.
fn with_settings(argv: &[String]) -> Result<Vec<String>, crate::config::ConfigError> {
    let bare = argv
        .iter()
        .skip(1)
        .any(|a| matches!(a.as_str(), "--help" | "-h" | "--version" | "-V"))
        || matches!(
            argv.get(1).map(String::as_str),
            Some("help" | "completions" | "man")
        );
    match crate::config::settings::prepare(argv.to_vec()) {
        Ok(p) => Ok(p.argv),
        Err(_) if bare => Ok(argv.to_vec()),
        Err(e) => Err(e),
    }
}

/// Whether the command writes its stderr as JSON lines (`--log-format json`).
pub fn json_output(command: &Command) -> bool {
    match command {
        Command::Generate(a) => a.run.log_format == cli::LogFormat::Json,
        Command::Label(a) => a.run.log_format == cli::LogFormat::Json,
        Command::Optimize(a) => a.common.run.log_format == cli::LogFormat::Json,
        _ => false,
    }
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli, argv: Vec<String>) -> ExitCode {
    let json = json_output(&cli.command);
    match dispatch(cli.command, argv, json) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            print_error(&e, json);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs one command, printing what it prints on success; returns the exit
/// code (1: finished with rejects).
fn dispatch(command: Command, argv: Vec<String>, json: bool) -> Result<u8, RunError> {
    match command {
        Command::Config(args) => match args.action {
            cli::ConfigAction::Show(_) => {
                let report = crate::config::settings::report()
                    .cloned()
                    .unwrap_or_default();
                print!("{}", crate::config::settings::show(&report));
                Ok(0)
            }
        },
        Command::Models(args) => models::run(&args.endpoint).map(|ids| {
            for id in ids {
                println!("{id}");
            }
            0
        }),
        Command::Completions(args) => completions(args.shell),
        Command::Man => man(),
        Command::Validate(args) => validate::validate(&args).map(|report| {
            println!("{report}");
            0
        }),
        Command::Model(cmd) => model::model(cmd),
        Command::Serve(args) => crate::serve::run(&args),
        Command::Report(args) => crate::output::report::command(&args)
            .map(|path| {
                println!("{}", path.display());
                0
            })
            .map_err(RunError::from),
        Command::Render(args) => render::render(&args).map(|out| {
            print!("{out}");
            0
        }),
        Command::Generate(args) if args.dry_run => GenerateConfig::from_args(&args, true)
            .and_then(|cfg| dry_run::dry_run(&cfg))
            .map(|out| {
                print!("{out}");
                0
            }),
        Command::Generate(args) => GenerateConfig::from_args(&args, false).and_then(|cfg| {
            let s = run_on_workers(generate::generate(cfg, argv))??;
            report_generate(&s, json);
            Ok(u8::from(s.counts.rejected > 0))
        }),
        Command::Merge(args) => merge::merge(&args).map(|r| {
            eprint!("{}", merge::summary(&r));
            0
        }),
        Command::Label(args) => LabelConfig::from_args(&args).and_then(|cfg| {
            let s = run_on_workers(label::label(cfg, argv))??;
            report_label(&s, json);
            Ok(u8::from(s.report.rejected > 0))
        }),
        Command::Optimize(args) => optimize_command(&args),
    }
}

/// `cai completions SHELL`.
fn completions(shell: clap_complete::Shell) -> Result<u8, RunError> {
    use std::io::Write;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    // Into a buffer first: clap_complete panics on a write error
    // (`cai completions bash | head`).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "cai", &mut buf);
    let _ = std::io::stdout().write_all(&buf);
    Ok(0)
}

/// `cai man`.
fn man() -> Result<u8, RunError> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd)
        .render(&mut std::io::stdout())
        .map(|()| 0)
        .map_err(|e| RunError::Usage(format!("cannot write the man page: {e}")))
}

/// `cai optimize` and `cai optimize eval`.
fn optimize_command(args: &cli::OptimizeArgs) -> Result<u8, RunError> {
    let cfg = match &args.action {
        Some(cli::OptimizeAction::Eval(e)) => crate::config::optimize::OptimizeConfig::eval(e),
        None => crate::config::optimize::OptimizeConfig::search(args),
    }?;
    let out = runtime()?.block_on(optimize::optimize(cfg))?;
    print!("{}", out.table);
    if !out.summary.is_empty() {
        eprintln!("{}", out.summary);
    }
    Ok(0)
}

/// A failed command's error: a JSON event with `--log-format json`, else
/// `cai: error:` lines.
fn print_error(e: &RunError, json: bool) {
    if json {
        let event = serde_json::json!({
            "event": "error",
            "exit_code": e.exit_code(),
            "message": e.to_string(),
        });
        eprintln!("{event}");
    } else {
        for line in e.to_string().lines() {
            eprintln!("cai: error: {line}");
        }
    }
}

/// Runs a command's future as a task on the runtime's worker threads, not
/// on the main thread that `block_on` parks: the run loop is woken by every
/// finished request, and waking a task on a worker that is already running
/// costs far less than a futex wake and a context switch of the main
/// thread, per request. A panic in the command is re-raised here.
fn run_on_workers<F>(fut: F) -> Result<F::Output, RunError>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime()?;
    let task = rt.spawn(fut);
    match rt.block_on(task) {
        Ok(out) => Ok(out),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(RunError::Internal(format!("the run was cancelled: {e}"))),
    }
}

/// The async runtime of a command that sends requests.
fn runtime() -> Result<tokio::runtime::Runtime, RunError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Internal(format!("cannot start the async runtime: {e}")))
}

fn report_generate(s: &generate::RunSummary, json: bool) {
    if json {
        let event = serde_json::json!({
            "event": "finish",
            "out": s.out,
            "counts": s.counts,
            "requests": s.stats,
        });
        eprintln!("{event}");
        return;
    }
    eprintln!(
        "cai: wrote {} SFT rows and {} preference rows to {} ({} rejected, {} requests, {} retries)",
        s.counts.sft_rows,
        s.counts.preference_rows,
        s.out.display(),
        s.counts.rejected,
        s.stats.requests,
        s.stats.retries
    );
    if s.stats.cost_micro_usd > 0 {
        eprintln!(
            "cai: cost ${:.4} (from the replies' usage; see manifest.json)",
            crate::cost::from_micros(s.stats.cost_micro_usd)
        );
    }
    if s.counts.rejected > 0 {
        eprintln!(
            "cai: {} prompts rejected: see {}",
            s.counts.rejected,
            s.out.join("rejects.jsonl").display()
        );
    }
    if s.counts.truncated_rows > 0 {
        eprintln!(
            "cai: {} rows kept a reply cut off by --max-tokens (--on-length keep; marked \"truncated\": true in {}; --on-length retry|reject to leave them out)",
            s.counts.truncated_rows,
            s.out.join("trace.jsonl").display()
        );
    }
}

fn report_label(s: &label::LabelSummary, json: bool) {
    if json {
        let event = serde_json::json!({
            "event": "finish",
            "out": s.out,
            "report": s.report,
        });
        eprintln!("{event}");
        return;
    }
    print!("{}", s.report.table());
    eprintln!(
        "cai: labelled {} pairs into {} ({} rejected, {} requests, {} retries); report in {}",
        s.report.judged,
        s.out.join("labels.csv").display(),
        s.report.rejected,
        s.stats.requests,
        s.stats.retries,
        s.out.join("report.json").display()
    );
}
