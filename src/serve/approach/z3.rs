//! `z3`: the model states the problem in SMT-LIB 2, the `z3` solver
//! decides it, and the model answers from the solver's verdict — the
//! declarative, solver-aided scheme of Ye et al., "SatLM:
//! Satisfiability-Aided Language Models Using Declarative Prompting"
//! (NeurIPS 2023), with SMT-LIB as the declarative language.
//!
//! Nothing the model writes is executed except by the solver: the program
//! goes to `z3 -smt2 -in` on standard input, with a wall-clock limit
//! (`-T:` and a kill from here as a backstop), a memory limit (`-memory:`),
//! an empty environment and an empty scratch directory as its working
//! directory. Options that would make z3 write files (`…-output-channel`)
//! and `include` are refused before it runs. A solver that fails (rejects
//! the program, runs out of time or memory, cannot start) leaves the model
//! to answer by itself, and the answer's note says so. Two calls, one
//! after the other, with the solver between them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::provider::Message;

use super::{Answer, Ctx};
use crate::serve::error::ApiError;

/// Marks the formalisation request (the test upstream keys on it too).
const FORMALISE: &str =
    "Translate the problem in my last message into an SMT-LIB 2 program for the z3 solver";
/// Most solver output quoted to the model.
const MAX_OUTPUT: usize = 8 << 10;

/// What the solver made of a program.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The solver's output (`sat` / `unsat` / `unknown`, models, values).
    Solved(String),
    /// The solver rejected the program (its error lines), or it was
    /// refused before running.
    Error(String),
    /// Cut at the time limit.
    Timeout,
}

/// The `z3` executable on `PATH`, if any.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("z3"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// The message of the 400 a request for `z3` gets without the solver.
pub const MISSING: &str = "approach z3 needs the z3 solver on the server's PATH (Debian/Ubuntu: apt-get install z3; the package is named `z3`)";

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<Answer, ApiError> {
    let mut convo = messages.to_vec();
    if let Some(p) = &prev {
        convo.push(Message::assistant(p.text.clone()));
    }
    convo.push(Message::user(format!(
        "{FORMALISE}: declare the unknowns, assert every condition, then (check-sat) and, where values are wanted, (get-model) or (get-value ...). Reply with the program only, in a ```smt2 code block."
    )));
    let formal = ctx.call(&ctx.request(convo)).await?;
    let program = program_of(&formal.text);
    let verdict = match (&program, find()) {
        (None, _) => Verdict::Error("the model wrote no SMT-LIB program".into()),
        (Some(_), None) => Verdict::Error("the z3 solver is not installed".into()),
        (Some(p), Some(z3)) => solve(&z3, p, ctx.knobs.z3_timeout, ctx.knobs.z3_memory_mb).await,
    };
    let program = program.unwrap_or_default();
    let (ask, note) = final_ask(&verdict, &program, ctx.knobs.z3_timeout);
    let mut convo = messages.to_vec();
    convo.push(Message::user(ask));
    let fin = ctx.call(&ctx.request(convo)).await?;
    let full = format!(
        "SMT-LIB program:\n{program}\n\nSolver: {verdict:?}\n\nAnswer:\n{}",
        fin.text.trim()
    );
    let mut answer = Answer::of(fin.text.trim().to_string(), fin.finish).with_full(full);
    answer.note = note;
    Ok(answer)
}

/// The last request's text, and the note when the solver did not help.
fn final_ask(verdict: &Verdict, program: &str, limit: Duration) -> (String, Option<String>) {
    match verdict {
        Verdict::Solved(out) => (
            format!(
                "My last message was formalised as this SMT-LIB 2 program:\n\n```smt2\n{program}\n```\n\nThe z3 solver's output:\n\n```\n{out}\n```\n\nUsing the solver's result, write the final answer to my last message. Reply with the answer only."
            ),
            None,
        ),
        Verdict::Error(e) => (
            format!(
                "An attempt to formalise my last message for the z3 solver failed (solver error: {e}). Answer my last message by your own reasoning. Reply with the answer only."
            ),
            Some(format!("z3: the solver failed ({e}); answered without it")),
        ),
        Verdict::Timeout => (
            format!(
                "An attempt to formalise my last message for the z3 solver failed (the solver ran out of its {} s time limit). Answer my last message by your own reasoning. Reply with the answer only.",
                limit.as_secs_f64()
            ),
            Some(format!(
                "z3: the solver hit its {} s time limit; answered without it",
                limit.as_secs_f64()
            )),
        ),
    }
}

/// The program in a reply: its first fenced block, else the reply when it
/// reads as S-expressions.
pub fn program_of(reply: &str) -> Option<String> {
    if let Some(start) = reply.find("```") {
        let after = &reply[start + 3..];
        let body = after.split_once('\n').map_or("", |(_, b)| b);
        let body = body.split("```").next().unwrap_or(body).trim();
        return (!body.is_empty()).then(|| body.to_string());
    }
    let t = reply.trim();
    t.starts_with('(').then(|| t.to_string())
}

/// Runs `program` through `z3` with the limits; every failure is a verdict.
pub async fn solve(z3: &Path, program: &str, limit: Duration, memory_mb: u32) -> Verdict {
    let lowered = program.to_lowercase();
    if lowered.contains("output-channel") || lowered.contains("(include") {
        return Verdict::Error(
            "the program sets an output channel or includes a file, which is not allowed".into(),
        );
    }
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return Verdict::Error(format!("cannot make a scratch directory: {e}")),
    };
    let secs = limit.as_secs_f64().ceil().max(1.0) as u64;
    let started = Instant::now();
    let child = tokio::process::Command::new(z3)
        .args([
            "-smt2".to_string(),
            "-in".to_string(),
            format!("-T:{secs}"),
            format!("-memory:{memory_mb}"),
        ])
        .env_clear()
        .current_dir(scratch.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Verdict::Error(format!("cannot start {}: {e}", z3.display())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(program.as_bytes()).await {
            return Verdict::Error(format!("cannot send the program to z3: {e}"));
        }
    }
    // z3's own limit ends it; the kill (on drop) is for a solver that does not.
    let backstop = Duration::from_secs(secs) + Duration::from_secs(1);
    let out = match tokio::time::timeout(backstop, child.wait_with_output()).await {
        Err(_) => return Verdict::Timeout,
        Ok(Err(e)) => return Verdict::Error(format!("z3 failed: {e}")),
        Ok(Ok(o)) => o,
    };
    read_verdict(
        &out,
        started.elapsed(),
        limit.max(Duration::from_secs(secs)),
    )
}

/// The verdict in a finished run's output: a `timeout` line (or a run as
/// long as the limit) is a timeout, `(error …)` lines an error.
fn read_verdict(out: &std::process::Output, took: Duration, limit: Duration) -> Verdict {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut text: String = stdout.trim().to_string();
    if text.len() > MAX_OUTPUT {
        let cut = (0..=MAX_OUTPUT)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("\n… (output cut)");
    }
    if text.lines().any(|l| l.trim() == "timeout") || took >= limit {
        return Verdict::Timeout;
    }
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("(error"))
        .collect();
    if !errors.is_empty() {
        return Verdict::Error(errors.join("; "));
    }
    if text.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Verdict::Error(format!(
            "no output (exit {}): {}",
            out.status.code().unwrap_or(-1),
            stderr.trim()
        ));
    }
    Verdict::Solved(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_the_first_fenced_block_or_a_bare_s_expression() {
        assert_eq!(
            program_of("Here:\n```smt2\n(check-sat)\n```\nDone").as_deref(),
            Some("(check-sat)")
        );
        assert_eq!(program_of(" (check-sat) ").as_deref(), Some("(check-sat)"));
        assert_eq!(program_of("I cannot formalise this."), None);
    }

    #[tokio::test]
    async fn writing_options_are_refused_before_the_solver_runs() {
        let v = solve(
            Path::new("/nonexistent/z3"),
            "(set-option :regular-output-channel \"/tmp/x\")(check-sat)",
            Duration::from_secs(1),
            64,
        )
        .await;
        assert!(matches!(v, Verdict::Error(e) if e.contains("output channel")));
    }
}
