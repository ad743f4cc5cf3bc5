//! The outputs load with Hugging Face `datasets` into the columns TRL's SFT
//! and DPO trainers expect. Needs a Python with `datasets` installed, named
//! by `CAI_PYTHON` (scripts/test.sh sets one up); under CI its absence fails.

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn outputs_load_with_hugging_face_datasets() {
    let Some(python) = std::env::var_os("CAI_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set CAI_PYTHON to a Python with `datasets` installed"
        );
        eprintln!("skipped: set CAI_PYTHON to a Python with `datasets` to run this test");
        return;
    };
    let server = openai_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 50);
    let out = dir.path().join("out");
    generate_openai(&server.uri(), &prompts, &fixture("native.json"), &out)
        .args(["--rounds", "2"])
        .assert()
        .code(0);
    let status = std::process::Command::new(python)
        .arg(repo("tests/python/check_datasets.py"))
        .arg(&out)
        .arg("50")
        .status()
        .expect("python runs");
    assert!(status.success(), "check_datasets.py failed");
}
