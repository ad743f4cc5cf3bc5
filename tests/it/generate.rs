//! `cai generate` end to end against fake OpenAI-compatible and TGI servers.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn openai_request_bodies_are_exact() {
    let server = openai_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(&prompts, "id,prompt\nq1,What is 2+2?\n").unwrap();
    let out = dir.path().join("out");
    generate_openai(&server.uri(), &prompts, &fixture("native.json"), &out)
        .args([
            "--seed",
            "5",
            "--max-tokens",
            "64",
            "--temperature",
            "0.5",
            "--top-p",
            "0.9",
        ])
        .assert()
        .code(0);

    let b = bodies(&server).await;
    assert_eq!(b.len(), 3, "initial, critique, revision");
    let few_shots = json!([
        {"role": "user", "content": "FS-INPUT"},
        {"role": "assistant", "content": "FS-ANSWER"},
        {"role": "user", "content": "FS-CP"},
        {"role": "assistant", "content": "FS-CRITIQUE"},
        {"role": "user", "content": "FS-RP"},
        {"role": "assistant", "content": "FS-REVISION"}
    ]);
    let fs = few_shots.as_array().unwrap().clone();
    let mut initial = vec![json!({"role": "system", "content": "SYS-INITIAL"})];
    initial.extend(fs.clone());
    initial.push(json!({"role": "user", "content": "What is 2+2?"}));
    assert_eq!(
        b[0],
        json!({"model": "test-model", "messages": initial, "max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "seed": 5})
    );

    // The critique request continues the conversation under the critique
    // system message; the revision request under the revision one.
    let answer = fake_reply("What is 2+2?", &b[0]["messages"].to_string());
    let crit = b[1]["messages"].as_array().unwrap();
    assert_eq!(
        crit[0],
        json!({"role": "system", "content": "SYS-CRITIQUE"})
    );
    assert_eq!(crit[1..7], fs[..]);
    assert_eq!(crit[7], json!({"role": "user", "content": "What is 2+2?"}));
    assert_eq!(crit[8], json!({"role": "assistant", "content": answer}));
    let principle = crit[9]["content"].as_str().unwrap();
    assert!(principle.starts_with("CRITIQUE-REQ-"), "{principle}");
    assert_eq!(crit.len(), 10);

    let rev = b[2]["messages"].as_array().unwrap();
    assert_eq!(rev[0], json!({"role": "system", "content": "SYS-REVISION"}));
    assert_eq!(rev.len(), 12);
    let critique_text = fake_reply(principle, &b[1]["messages"].to_string());
    // The "Critique:" label is stripped before it goes back into the conversation.
    assert_eq!(
        rev[10],
        json!({"role": "assistant", "content": critique_text.trim_start_matches("Critique: ")})
    );
    let n = &principle["CRITIQUE-REQ-".len()..][..1];
    assert_eq!(
        rev[11]["content"].as_str().unwrap()[..15],
        format!("REVISION-REQ-{n}:")
    );
    assert_eq!(b[2]["seed"], 5);

    // The rows carry the stripped final revision and the original prompt.
    let sft = read_jsonl(&out.join("sft.jsonl"));
    let revision = fake_reply(
        rev[11]["content"].as_str().unwrap(),
        &b[2]["messages"].to_string(),
    );
    assert_eq!(
        sft[0],
        json!({"id": "q1", "messages": [
            {"role": "system", "content": "SYS-INITIAL"},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": revision.trim_start_matches("Revision: ")}
        ]})
    );
    let pref = read_jsonl(&out.join("preference.jsonl"));
    assert_eq!(
        pref[0],
        json!({"id": "q1",
            "prompt": [{"role": "system", "content": "SYS-INITIAL"}, {"role": "user", "content": "What is 2+2?"}],
            "chosen": [{"role": "assistant", "content": revision.trim_start_matches("Revision: ")}],
            "rejected": [{"role": "assistant", "content": answer}]})
    );
    let trace = read_jsonl(&out.join("trace.jsonl"));
    for col in [
        "init_prompt",
        "init_response",
        "critic_prompt",
        "critic_response",
        "revision_prompt",
        "revision_response",
    ] {
        assert!(trace[0][col].is_string(), "trace lacks {col}: {}", trace[0]);
    }
    assert_eq!(trace[0]["critic_prompt"], principle);
    assert_eq!(trace[0]["steps"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_round_conversations_grow_depth_first() {
    let server = openai_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(&prompts, "prompt\nTell me about rivers.\n").unwrap();
    let out = dir.path().join("out");
    generate_openai(&server.uri(), &prompts, &fixture("native.json"), &out)
        .args(["--rounds", "3"])
        .assert()
        .code(0);
    let b = bodies(&server).await;
    assert_eq!(b.len(), 7);
    // Each request extends the previous conversation (ignoring the system
    // message, which is stage-specific) by the reply and one new turn.
    for i in 1..b.len() {
        let prev = &b[i - 1]["messages"].as_array().unwrap()[1..];
        let cur = &b[i]["messages"].as_array().unwrap()[1..];
        assert_eq!(cur.len(), prev.len() + 2, "request {i}");
        assert_eq!(&cur[..prev.len()], prev, "request {i} keeps the history");
    }
    let trace = read_jsonl(&out.join("trace.jsonl"));
    assert_eq!(trace[0]["rounds"].as_array().unwrap().len(), 3);
    assert_eq!(
        trace[0]["id"], "0",
        "row index is the id without an id column"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_seed_same_principles_at_any_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 40);
    let mut runs = Vec::new();
    for conc in ["1", "32"] {
        let server = openai_server().await;
        let out = dir.path().join(format!("out{conc}"));
        generate_openai(&server.uri(), &prompts, &fixture("native.json"), &out)
            .args(["--rounds", "2", "--seed", "42", "--concurrency", conc])
            .assert()
            .code(0);
        let trace = read_jsonl(&out.join("trace.jsonl"));
        let picks: HashMap<String, Vec<u64>> = trace
            .iter()
            .map(|t| {
                let idx = t["rounds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["principle_index"].as_u64().unwrap())
                    .collect();
                (t["id"].as_str().unwrap().to_string(), idx)
            })
            .collect();
        let mut sft = read_csv(&out.join("sft.csv"));
        sft.sort();
        runs.push((picks, sft));
    }
    assert_eq!(runs[0].0.len(), 40);
    assert_eq!(runs[0], runs[1]);
    let distinct: HashSet<&Vec<u64>> = runs[0].0.values().collect();
    assert!(distinct.len() > 1, "principles should vary across prompts");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_text_round_trips_through_csv_and_requests() {
    let server = openai_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let input = fixture("hostile.csv");
    generate_openai(&server.uri(), &input, &fixture("native.json"), &out)
        .assert()
        .code(0);
    let want: HashMap<String, String> = read_csv(&input)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let sft = read_csv(&out.join("sft.csv"));
    assert_eq!(sft.len(), want.len());
    for row in &sft {
        assert_eq!(&want[&row[0]], &row[1], "prompt {} changed", row[0]);
    }
    let pref = read_csv(&out.join("preference.csv"));
    for row in &pref {
        assert_eq!(&want[&row[0]], &row[1]);
    }
    // Template syntax inside a prompt is sent literally.
    let sent: Vec<String> = bodies(&server)
        .await
        .iter()
        .filter_map(|b| {
            b["messages"]
                .as_array()?
                .iter()
                .find(|m| m["content"].as_str().is_some_and(|c| c.contains("7*7")))
                .map(|m| m["content"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(!sent.is_empty());
    assert!(sent
        .iter()
        .all(|s| s == "{{ 7*7 }} and {% for x in y %}{% endfor %}"));
    for row in read_jsonl(&out.join("sft.jsonl")) {
        let user = row["messages"][1]["content"].as_str().unwrap();
        assert_eq!(user, want[row["id"].as_str().unwrap()]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_constitution_format_drives_the_loop() {
    for (file, critique, revision, first_few_shot) in [
        (
            "native.json",
            "CRITIQUE-REQ-",
            "REVISION-REQ-",
            Some("FS-INPUT"),
        ),
        (
            "hf.json",
            "CRITIQUE-REQ-HF",
            "REVISION-REQ-HF",
            Some("HF-FS-USER"),
        ),
        ("anthropic.json", "CRITIQUE-REQ-A", "REVISION-REQ-A", None),
    ] {
        let server = openai_server().await;
        let dir = tempfile::tempdir().unwrap();
        let prompts = prompts_csv(dir.path(), 2);
        let out = dir.path().join("out");
        generate_openai(&server.uri(), &prompts, &fixture(file), &out)
            .assert()
            .code(0);
        let b = bodies(&server).await;
        assert_eq!(b.len(), 6, "{file}");
        let lasts: Vec<String> = b
            .iter()
            .map(|x| {
                let m = x["messages"].as_array().unwrap();
                m.last().unwrap()["content"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            lasts.iter().filter(|l| l.starts_with(critique)).count(),
            2,
            "{file}"
        );
        assert_eq!(
            lasts.iter().filter(|l| l.starts_with(revision)).count(),
            2,
            "{file}"
        );
        let firsts: Vec<&Value> = b.iter().map(|x| &x["messages"][0]).collect();
        if let Some(fs) = first_few_shot {
            assert!(
                b.iter().all(|x| x["messages"].to_string().contains(fs)),
                "{file}: few-shots in every request"
            );
        } else {
            assert!(
                firsts.iter().all(|m| m["role"] == "user"),
                "{file}: no system, no few-shots"
            );
        }
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        let format = file.trim_end_matches(".json");
        assert_eq!(manifest["constitution_format"], format);
    }
}

/// The acceptance run: 500 prompts × 2 rounds through an OpenAI-compatible server.
#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_prompts_two_rounds_openai() {
    let server = openai_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 500);
    let out = dir.path().join("out");
    generate_openai(&server.uri(), &prompts, &fixture("native.json"), &out)
        .args(["--rounds", "2", "--concurrency", "32"])
        .assert()
        .code(0);
    check_500(
        &prompts,
        &out,
        server.received_requests().await.unwrap().len(),
    );
}

/// The same through a TGI `generate` endpoint with a client-side chat template.
#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_prompts_two_rounds_tgi() {
    let server = tgi_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 500);
    let out = dir.path().join("out");
    generate_hf(&server.uri(), &prompts, &fixture("native.json"), &out)
        .args(["--rounds", "2", "--concurrency", "32"])
        .assert()
        .code(0);
    check_500(
        &prompts,
        &out,
        server.received_requests().await.unwrap().len(),
    );
}

fn check_500(prompts: &std::path::Path, out: &std::path::Path, requests: usize) {
    assert_eq!(
        requests, 2500,
        "1 initial + 2 × (critique + revision) per prompt"
    );
    let input: HashMap<String, String> = read_csv(prompts)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    for file in ["sft.csv", "preference.csv"] {
        let rows = read_csv(&out.join(file));
        assert_eq!(rows.len(), 500, "{file}");
        let ids: HashSet<&String> = rows.iter().map(|r| &r[0]).collect();
        assert_eq!(ids.len(), 500, "{file}: ids unique");
        for r in &rows {
            assert_eq!(r[1], input[&r[0]], "{file}: prompt byte-identical");
        }
    }
    for file in ["sft.jsonl", "preference.jsonl", "trace.jsonl"] {
        assert_eq!(read_jsonl(&out.join(file)).len(), 500, "{file}");
    }
    assert!(std::fs::read_to_string(out.join("rejects.jsonl"))
        .unwrap()
        .is_empty());
    let m: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["requests"]["requests"], 2500);
    assert_eq!(m["counts"]["sft_rows"], 500);
    assert_eq!(m["status"], "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn tgi_request_bodies_are_exact() {
    let server = tgi_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(&prompts, "id,prompt\nq1,Why is the sky blue?\n").unwrap();
    let out = dir.path().join("out");
    generate_hf(&server.uri(), &prompts, &fixture("anthropic.json"), &out)
        .args(["--chat-template", "zephyr"])
        .args([
            "--seed",
            "3",
            "--max-tokens",
            "50",
            "--temperature",
            "0.8",
            "--top-p",
            "0.95",
        ])
        .assert()
        .code(0);
    let b = bodies(&server).await;
    assert_eq!(b.len(), 3);
    assert_eq!(
        b[0],
        json!({"inputs": "<|user|>\nWhy is the sky blue?</s>\n<|assistant|>\n",
               "parameters": {"max_new_tokens": 50, "temperature": 0.8, "top_p": 0.95, "do_sample": true,
                              "seed": 3, "return_full_text": false, "details": true}})
    );
    let initial = "An initial answer";
    let critique_inputs = b[1]["inputs"].as_str().unwrap();
    assert!(critique_inputs
        .starts_with("<|user|>\nWhy is the sky blue?</s>\n<|assistant|>\nAn initial answer"));
    assert!(critique_inputs
        .ends_with("<|user|>\nCRITIQUE-REQ-A: identify harmful content.</s>\n<|assistant|>\n"));
    assert!(b[2]["inputs"]
        .as_str()
        .unwrap()
        .ends_with("<|user|>\nREVISION-REQ-A: remove harmful content.</s>\n<|assistant|>\n"));
    let pref = read_csv(&out.join("preference.csv"));
    assert!(pref[0][3].starts_with(initial));
    assert!(pref[0][2].starts_with("a better answer"));
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_tgi_requests_omit_temperature() {
    let server = tgi_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 1);
    generate_hf(
        &server.uri(),
        &prompts,
        &fixture("native.json"),
        &dir.path().join("out"),
    )
    .args(["--temperature", "0", "--rounds", "0"])
    .assert()
    .code(0);
    let b = bodies(&server).await;
    assert_eq!(b.len(), 1);
    let p = &b[0]["parameters"];
    assert_eq!(p["do_sample"], false);
    assert!(
        p.get("temperature").is_none() && p.get("top_p").is_none(),
        "{p}"
    );
}
