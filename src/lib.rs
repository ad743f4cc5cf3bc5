//! `cai`: Constitutional AI data generation.
//!
//! Prompts and a constitution go in; a language model is driven through
//! initial answer → critique → revision loops; SFT and preference datasets
//! come out. `main.rs` only parses arguments and maps the result to an exit
//! code; everything else lives in the modules below.

pub mod cli;
pub mod config;
pub mod cost;
pub mod dryrun;
pub mod engine;
pub mod fake;
pub mod input;
pub mod judge;
pub mod label;
pub mod model_store;
pub mod models;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod provider;
pub mod run;
pub mod select;
pub mod serve;
pub mod settings;
pub mod template;

use std::process::ExitCode;

use cli::{Cli, Command};

/// `cai model fetch|list|path`.
fn model_command(cmd: cli::ModelCommand) -> Result<u8, run::RunError> {
    let fail = |e: model_store::ModelError| run::RunError::Usage(e.to_string());
    match cmd {
        cli::ModelCommand::Path => {
            println!(
                "{}",
                model_store::default_model_path().map_err(fail)?.display()
            );
        }
        cli::ModelCommand::List => {
            let dir = model_store::cache_dir().map_err(fail)?;
            let models = model_store::list().map_err(fail)?;
            if models.is_empty() {
                eprintln!("cai: no models in {}; run `cai model fetch`", dir.display());
            }
            for m in models {
                println!("{}\t{:.1} MB", m.path.display(), m.bytes as f64 / 1e6);
            }
        }
        cli::ModelCommand::Fetch => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    run::RunError::Usage(format!("cannot start the async runtime: {e}"))
                })?;
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let path = rt
                .block_on(model_store::fetch_default(progress))
                .map_err(fail)?;
            println!("{}", path.display());
        }
    }
    Ok(0)
}

/// `--version`: the package version, and the git commit when built from a
/// checkout (see `build.rs`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("CAI_GIT_SUFFIX"));

/// Runs a parsed command line; returns the process exit code.
pub fn main_with(cli: Cli, argv: Vec<String>) -> ExitCode {
    let json = match &cli.command {
        Command::Generate(a) => a.run.log_format == cli::LogFormat::Json,
        Command::Label(a) => a.run.log_format == cli::LogFormat::Json,
        _ => false,
    };
    let result = match cli.command {
        Command::Config(args) => match args.action {
            cli::ConfigAction::Show(_) => {
                let report = settings::report().cloned().unwrap_or_default();
                print!("{}", settings::show(&report));
                Ok(0)
            }
        },
        Command::Models(args) => models::run(&args.endpoint).map(|ids| {
            for id in ids {
                println!("{id}");
            }
            0
        }),
        Command::Completions(args) => {
            use std::io::Write;
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics on a write error
            // (`cai completions bash | head`).
            let mut buf = Vec::new();
            clap_complete::generate(args.shell, &mut cmd, "cai", &mut buf);
            let _ = std::io::stdout().write_all(&buf);
            Ok(0)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => Ok(0),
                Err(e) => Err(run::RunError::Usage(format!(
                    "cannot write the man page: {e}"
                ))),
            }
        }
        Command::Validate(args) => run::validate(&args).map(|report| {
            println!("{report}");
            0
        }),
        Command::Model(cmd) => model_command(cmd),
        Command::Render(args) => run::render(&args).map(|out| {
            print!("{out}");
            0
        }),
        Command::Generate(args) if args.dry_run => run::dry_run(&args).map(|out| {
            print!("{out}");
            0
        }),
        Command::Generate(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cai: cannot start the async runtime: {e}");
                    return ExitCode::from(3);
                }
            };
            rt.block_on(run::generate(&args, argv)).map(|s| {
                if json {
                    let event = serde_json::json!({
                        "event": "finish",
                        "out": s.out,
                        "counts": s.counts,
                        "requests": s.stats,
                    });
                    eprintln!("{event}");
                } else {
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
                            cost::from_micros(s.stats.cost_micro_usd)
                        );
                    }
                    if s.counts.rejected > 0 {
                        eprintln!(
                            "cai: {} prompts rejected: see {}",
                            s.counts.rejected,
                            s.out.join("rejects.jsonl").display()
                        );
                    }
                }
                u8::from(s.counts.rejected > 0)
            })
        }
        Command::Serve(args) => serve::run(&args),
        Command::Label(args) => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            rt.block_on(label::label(&args, argv)).map(|s| {
                if json {
                    let event = serde_json::json!({
                        "event": "finish",
                        "out": s.out,
                        "report": s.report,
                    });
                    eprintln!("{event}");
                } else {
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
                u8::from(s.report.rejected > 0)
            })
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
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
            ExitCode::from(e.exit_code())
        }
    }
}

/// The async runtime of a command that sends requests.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cai: cannot start the async runtime: {e}");
            ExitCode::from(3)
        })
}
