//! The provider table: every row is a `--provider` value the CLI accepts,
//! says where its key comes from (or that it needs none), lists models
//! through `Provider::list_models` against the in-repo fake server, and has
//! prices or says it has none.

use cai::cli::{Cli, Command, ProviderKind};
use cai::provider::build::{self, Flags, Keys};
use cai::provider::registry::{Backend, ModelList, Prices, ENTRIES};
use cai_fake::{FakeConfig, FakeServer};
use clap::Parser;

fn flags<'a>(kind: ProviderKind, base: &'a [String]) -> Flags<'a> {
    Flags {
        provider: Some(kind),
        base_urls: base,
        model: Some("m"),
        api_key_env: None,
        chat_template: "chatml",
        timeout: 10.0,
        max_reply_bytes: None,
        offline: true,
        local_parallel: None,
        local_cache_mb: None,
        prompt_cache: true,
        api: Default::default(),
    }
}

#[test]
fn every_row_is_accepted_by_the_cli_and_says_where_its_key_comes_from() {
    assert_eq!(ProviderKind::all().len(), ENTRIES.len());
    for e in ENTRIES {
        let cli = Cli::try_parse_from(["cai", "models", "--provider", e.name])
            .unwrap_or_else(|err| panic!("--provider {}: {err}", e.name));
        let Command::Models(args) = cli.command else {
            panic!("not the models command");
        };
        assert_eq!(args.endpoint.provider.map(|k| k.name()), Some(e.name));
        // A key variable, or none on purpose: only the embedded model and
        // servers on this machine need none, and they cost nothing.
        if e.key_vars.is_empty() {
            assert_eq!(e.prices, Prices::Free, "{} needs no key", e.name);
        }
        for v in e.key_vars {
            assert!(build::is_var_name(v), "{}: {v}", e.name);
        }
        match e.prices {
            Prices::Table(rows) => {
                assert!(!rows.is_empty(), "{}", e.name);
                for r in rows {
                    let found = cai::cost::lookup(r.model).expect(r.model);
                    assert_eq!(found, r, "{}: {}", e.name, r.model);
                }
            }
            // Says so: free, or hosted without listed prices.
            Prices::Free | Prices::Unlisted => {}
        }
    }
    let help = Cli::try_parse_from(["cai", "generate", "--provider", "no-such"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    for e in ENTRIES {
        assert!(help.contains(e.name), "{} missing from: {help}", e.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_with_a_model_list_lists_through_the_provider() {
    let fake = FakeServer::start(FakeConfig {
        model: "fake-model-7".into(),
        ..FakeConfig::default()
    })
    .await
    .expect("fake server starts");
    for e in ENTRIES {
        let kind = ProviderKind::named(e.name).expect(e.name);
        // Each backend's root as its own clients give it.
        let base = match e.backend {
            Backend::OpenAi => format!("{}/v1", fake.url()),
            _ => fake.url(),
        };
        let base = [base];
        if e.backend == Backend::Local {
            assert_eq!(e.models, ModelList::None);
            continue;
        }
        let plan = build::plan(&flags(kind, &base), 1, Keys::Required).expect(e.name);
        let provider = plan.build().expect(e.name);
        let listed = provider.list_models().await;
        match e.models {
            ModelList::None => {
                let err = listed.expect_err(e.name).to_string();
                assert!(err.contains("no model list"), "{}: {err}", e.name);
            }
            _ => assert_eq!(
                listed.unwrap_or_else(|err| panic!("{}: {err}", e.name)),
                vec!["fake-model-7".to_string()],
                "{}",
                e.name
            ),
        }
    }
    fake.shutdown().await;
}
