//! `cai`: Constitutional AI data generation.
//!
//! Prompts and a constitution go in; a language model is driven through
//! initial answer → critique → revision loops; SFT and preference datasets
//! come out. `main.rs` only parses arguments and maps the result to an exit
//! code; everything else lives in the modules below.

pub mod cli;
pub mod config;
pub mod engine;
pub mod fake;
pub mod input;
pub mod judge;
pub mod label;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod provider;
pub mod run;
pub mod select;
pub mod template;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs a parsed command line; returns the process exit code.
pub fn main_with(cli: Cli, argv: Vec<String>) -> ExitCode {
    let json = match &cli.command {
        Command::Generate(a) => a.log_format == cli::LogFormat::Json,
        Command::Label(a) => a.log_format == cli::LogFormat::Json,
        _ => false,
    };
    let result = match cli.command {
        Command::Validate(args) => run::validate(&args).map(|report| {
            println!("{report}");
            0
        }),
        Command::Render(args) => run::render(&args).map(|out| {
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
