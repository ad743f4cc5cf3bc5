//! How `generate` and `serve` prompt the model answering: the prompt
//! format (`--base-format`) and the optimized examples placed before each
//! query (`--examples`, `--num-examples`), checked against the endpoint
//! before anything is sent.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::ConfigError;
use crate::cli::{EndpointArgs, InferenceArgs};
use crate::error::RunError;
use crate::feedback::examples::Retriever;
use crate::input::queries;
use crate::provider::plain::{self, BaseFormat};

/// `--base-format`, `--examples` and `--num-examples`, checked.
#[derive(Clone, Default)]
pub struct Inference {
    pub format: BaseFormat,
    /// The bank and how many of its best matches go before each query.
    pub examples: Option<(Arc<Retriever>, usize)>,
    /// SHA-256 of the bank's queries and answers, for a run's fingerprint.
    pub examples_sha256: Option<String>,
}

impl Inference {
    /// Reads the bank and checks that the endpoint `endpoint` selects can
    /// take the format.
    pub fn from_args(args: &InferenceArgs, endpoint: &EndpointArgs) -> Result<Inference, RunError> {
        let (kind, _) = super::select_provider(endpoint);
        plain::check(args.base_format, kind.entry(), endpoint.api)
            .map_err(|e| ConfigError::flag("--base-format", e.to_string()))?;
        let Some(path) = &args.examples else {
            return Ok(Inference {
                format: args.base_format,
                ..Inference::default()
            });
        };
        if args.num_examples == 0 {
            return Err(ConfigError::conflict(
                "--num-examples",
                "--examples",
                "--num-examples must be at least 1 with --examples",
            )
            .into());
        }
        let bank = queries::read_examples(path)?;
        if bank.is_empty() {
            return Err(ConfigError::FlagFile {
                flag: "--examples",
                path: path.clone(),
                why: "holds no examples".into(),
            }
            .into());
        }
        let mut h = Sha256::new();
        for e in &bank {
            for field in [&e.query, &e.answer] {
                h.update((field.len() as u64).to_le_bytes());
                h.update(field.as_bytes());
            }
        }
        Ok(Inference {
            format: args.base_format,
            examples: Some((Arc::new(Retriever::new(bank)), args.num_examples)),
            examples_sha256: Some(crate::digest::hex(&h.finalize())),
        })
    }
}
