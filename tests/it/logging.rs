//! `--log-level` / `RUST_LOG`: diagnostic records on stderr, quiet by
//! default, JSON lines beside the run events with `--log-format json`, and
//! never a key.

use serde_json::Value;

use crate::common::*;

/// `cai validate` on the shipped sample: loads a constitution and reads
/// prompts, both of which log at debug level.
fn validate() -> assert_cmd::Command {
    let mut c = cai();
    c.env_remove("RUST_LOG")
        .arg("validate")
        .arg("--prompts")
        .arg(repo("prompts/harmless_sample.csv"))
        .arg("--constitution")
        .arg(repo("principles/harmless.json"));
    c
}

fn stderr_of(c: &mut assert_cmd::Command) -> String {
    let out = c.assert().success();
    String::from_utf8_lossy(&out.get_output().stderr).into_owned()
}

#[test]
fn debug_level_prints_debug_records_and_the_default_prints_none() {
    let quiet = stderr_of(&mut validate());
    assert!(
        !quiet.contains("DEBUG") && !quiet.contains("constitution loaded"),
        "the default level must not print debug records:\n{quiet}"
    );

    let loud = stderr_of(validate().args(["--log-level", "debug"]));
    let line = loud
        .lines()
        .find(|l| l.contains("constitution loaded"))
        .unwrap_or_else(|| panic!("no debug record:\n{loud}"));
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains("principles="), "{line}");
    assert!(loud.contains("reading prompts as CSV"), "{loud}");

    // `--log-level` is global: it may also come before the subcommand.
    let mut c = cai();
    c.env_remove("RUST_LOG")
        .args(["--log-level", "debug", "validate", "--constitution"])
        .arg(repo("principles/harmless.json"));
    assert!(stderr_of(&mut c).contains("constitution loaded"));

    // A lower level than the record's hides it.
    let info = stderr_of(validate().args(["--log-level", "info"]));
    assert!(!info.contains("constitution loaded"), "{info}");
}

#[test]
fn rust_log_is_read_when_the_flag_is_absent_and_a_bad_one_is_refused() {
    let from_env = stderr_of(validate().env("RUST_LOG", "cai=debug"));
    assert!(from_env.contains("constitution loaded"), "{from_env}");

    // The flag wins over the variable.
    let flag_wins = stderr_of(
        validate()
            .env("RUST_LOG", "cai=debug")
            .args(["--log-level", "warn"]),
    );
    assert!(!flag_wins.contains("constitution loaded"), "{flag_wins}");

    let out = validate().env("RUST_LOG", "cai=loud").assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("RUST_LOG"), "{err}");
}

/// With `--log-format json` every stderr line is one JSON object: the run's
/// events (with `event`) and the log records (with `level`) side by side;
/// and at the most verbose level the API key appears nowhere.
#[tokio::test]
async fn json_records_and_run_events_share_stderr_and_no_key_is_logged() {
    const KEY: &str = "sk-test-4f1c9e2a7b-never-print-me";
    let server = openai_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let out = generate_openai(
        &server.uri(),
        &prompts,
        &repo("principles/harmless.json"),
        &dir.path().join("out"),
    )
    .env_remove("RUST_LOG")
    .env("OPENAI_API_KEY", KEY)
    .args(["--log-format", "json", "--log-level", "trace"])
    .assert()
    .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        !stderr.contains(KEY) && !stdout.contains(KEY),
        "the key was printed"
    );
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let record = lines
        .iter()
        .find(|v| v["fields"]["message"] == "constitution loaded")
        .unwrap_or_else(|| panic!("no log record:\n{stderr}"));
    assert_eq!(record["level"], "DEBUG", "{record}");
    assert!(record.get("event").is_none(), "{record}");
    assert!(
        lines.iter().any(|v| v["event"] == "finish"),
        "the finish event is still printed:\n{stderr}"
    );
    // The key reached the server, so it was in use while logging ran.
    let sent = server.received_requests().await.unwrap();
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|r| r
        .headers
        .get("authorization")
        .is_some_and(|h| h.to_str().unwrap_or("").ends_with(KEY))));
}
