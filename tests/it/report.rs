//! `cai report`: the HTML page of a `generate` run on hostile prompts,
//! against the in-repo fake endpoint. The file is checked as text, then
//! opened in a real headless Chromium driven over the DevTools protocol by
//! `tests/python/report_browser.py` (Python named by `CAI_PYTHON` with
//! `websocket-client`, Debian's `chromium`; scripts/test.sh sets both up).
//! Under CI a missing browser or driver fails the browser test.

use std::path::{Path, PathBuf};

use cai_fake::{FakeConfig, FakeServer};

use crate::common::*;

const SCRIPT_PROMPT: &str = "<script>window.__caiPwned = 1</script>Tell me a secret";
const JSON_BREAKOUT_ID: &str = "</script><script>window.__caiPwned = 3</script>";

fn hostile_prompts(dir: &Path) -> PathBuf {
    let path = dir.join("hostile.csv");
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(["id", "prompt"]).unwrap();
    let rows: Vec<(String, String)> = [
        ("x-script", SCRIPT_PROMPT),
        (
            "x-img",
            "<img src=x onerror=\"window.__caiPwned = 2\"> <b data-x>bold?</b>",
        ),
        (JSON_BREAKOUT_ID, "an id that tries to end the facet JSON"),
        ("x-template", "{{ 7*7 }} {% for x in y %}{% endfor %}"),
        (
            "x-quotes",
            "\"double\" 'single' & ampersand &amp; <!-- comment -->",
        ),
        ("x-rtl", "file name: abc\u{202E}gnp.exe"),
        ("x-emoji", "🦀🎉 ünïcödé — 中文 עברית"),
        ("x-ls", "line\u{2028}separator\u{2029}paragraph"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .chain((0..12).map(|i| (format!("p{i:02}"), format!("Plain question number {i}?"))))
    .collect();
    for (id, prompt) in &rows {
        w.write_record([id, prompt]).unwrap();
    }
    w.flush().unwrap();
    path
}

/// A two-round run on the hostile prompts, with some replies empty so
/// that a few prompts are rejected; returns the run directory.
async fn hostile_run(dir: &Path) -> (PathBuf, FakeServer) {
    let server = FakeServer::start(FakeConfig {
        rate_empty: 0.08,
        seed: 5,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let out = dir.join("run");
    let status = cai()
        .args([
            "generate",
            "--provider",
            "openai",
            "--quiet",
            "--model",
            "fake-model",
            "--rounds",
            "2",
            "--concurrency",
            "1",
            "--max-retries",
            "0",
        ])
        .arg("--base-url")
        .arg(format!("{}/v1", server.url()))
        .args(harmless_files(&hostile_prompts(dir), &out))
        .output()
        .unwrap();
    assert!(
        matches!(status.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    (out, server)
}

fn report(out: &Path) -> String {
    let done = cai().arg("report").arg(out).output().unwrap();
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let path = String::from_utf8(done.stdout).unwrap();
    assert_eq!(Path::new(path.trim()), out.join("report.html"));
    std::fs::read_to_string(out.join("report.html")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn report_shows_hostile_prompts_as_escaped_text() {
    let dir = tempfile::tempdir().unwrap();
    let (out, server) = hostile_run(dir.path()).await;
    let html = report(&out);
    server.shutdown().await;

    // Exactly the page's own two script elements (facets JSON, filter code).
    assert_eq!(html.matches("<script").count(), 2);
    assert!(!html.contains(SCRIPT_PROMPT));
    assert!(html.contains("&lt;script&gt;window.__caiPwned = 1&lt;/script&gt;Tell me a secret"));
    assert!(!html.contains("<img") && !html.contains("<b data-x"));
    assert!(html.contains("{{ 7*7 }} {% for x in y %}{% endfor %}"));
    assert!(html.contains(
        "&quot;double&quot; &#39;single&#39; &amp; ampersand &amp;amp; &lt;!-- comment --&gt;"
    ));
    assert!(html.contains("🦀🎉 ünïcödé — 中文 עברית"));
    // The bidi override is shown as a marker, not applied.
    assert!(!html.contains('\u{202E}') && html.contains(">U+202E</span>gnp.exe"));
    // The id that tries to close the JSON block is escaped inside it.
    let facets = html.split("id=\"cai-facets\">").nth(1).unwrap();
    let facets = &facets[..facets.find("</script>").unwrap()];
    assert!(facets.contains("\\u003c/script\\u003e\\u003cscript\\u003e"));
    let parsed: serde_json::Value = serde_json::from_str(facets).unwrap();
    let ids: Vec<&str> = parsed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&JSON_BREAKOUT_ID));
    // Every finished row and every reject is on the page, one facet each.
    let trace = read_jsonl(&out.join("trace.jsonl")).len();
    let rejects = read_jsonl(&out.join("rejects.jsonl")).len();
    assert!(rejects > 0, "the run should have rejected some prompts");
    assert_eq!(trace + rejects, 20);
    assert_eq!(html.matches(" data-row>").count(), trace + rejects);
    assert_eq!(ids.len(), trace + rejects);
    // Nothing to fetch: a CSP without network sources, no external URLs.
    assert!(html.contains("content=\"default-src 'none'; script-src 'sha256-"));
    for needle in ["src=\"http", "href=\"http", "url(", "@import"] {
        assert!(!html.contains(needle), "{needle}");
    }
}

#[test]
fn report_of_a_directory_without_a_run_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = cai().arg("report").arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");

    let out = cai().arg("report").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a run directory"), "{err}");
    assert!(!dir.path().join("report.html").exists());
}

#[test]
fn report_names_the_file_and_line_of_a_corrupt_trace() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trace.jsonl"),
        "{\"id\":\"a\",\"prompt\":\"p\",\"init_response\":\"x\",\"rounds\":[]}\n{oops\n",
    )
    .unwrap();
    let out = cai().arg("report").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trace.jsonl:2:"), "{err}");
}

/// The Python with the DevTools driver, and Chromium; `None` means skip
/// (outside CI only).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    let python = std::env::var_os("CAI_PYTHON").map(PathBuf::from);
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    match (python, chromium) {
        (Some(p), Some(c)) => Some((p, c)),
        (p, c) => {
            assert!(
                !ci,
                "CI must provide Chromium (found: {c:?}) and CAI_PYTHON with websocket-client (found: {p:?}); scripts/test.sh installs both"
            );
            eprintln!("skipped: needs /usr/bin/chromium and CAI_PYTHON (see scripts/test.sh)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn report_in_headless_chromium_runs_no_data_script_loads_nothing_and_filters_rows() {
    let Some((python, chromium)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (out, server) = hostile_run(dir.path()).await;
    report(&out);
    server.shutdown().await;
    let run = std::process::Command::new(python)
        .arg(repo("tests/python/report_browser.py"))
        .arg(out.join("report.html"))
        .arg("--chromium")
        .arg(chromium)
        .args(["--must-show", SCRIPT_PROMPT])
        .args(["--must-show", "{{ 7*7 }} {% for x in y %}{% endfor %}"])
        .args([
            "--must-show",
            "<img src=x onerror=\"window.__caiPwned = 2\">",
        ])
        .args(["--must-show", "🦀🎉 ünïcödé — 中文 עברית"])
        .args(["--filter-id", "x-"])
        .args(["--search", "plain question number 1"])
        .args(["--stage-filter", "done"])
        .output()
        .expect("the browser driver runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["problems"], serde_json::json!([]));
    assert_eq!(result["rows"], 20);
    // The page itself was loaded, from the file and nothing else.
    let requests = result["requests"].as_array().unwrap();
    assert!(!requests.is_empty(), "{stdout}");
    assert!(requests
        .iter()
        .all(|u| u.as_str().unwrap().starts_with("file:")));
}
