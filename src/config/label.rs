//! `label`'s arguments checked once, into a [`LabelConfig`].

use std::path::PathBuf;

use super::generate::DEFAULT_SEED;
use super::RunSettings;
use crate::cli::{EndpointArgs, LabelArgs, TiesArg};
use crate::engine::rundir::Fingerprint;
use crate::error::RunError;
use crate::feedback::judge::JudgeOptions;
use crate::input::Constitution;
use crate::output::manifest;
use crate::template::Templates;

/// Everything `label` needs, checked.
pub struct LabelConfig {
    pub pairs: PathBuf,
    pub limit: Option<u64>,
    pub constitution: Option<Constitution>,
    pub constitution_path: Option<PathBuf>,
    pub templates: Templates,
    pub endpoint: EndpointArgs,
    pub judge: JudgeOptions,
    /// `--judge` specs (empty: the main endpoint judges).
    pub judges: Vec<String>,
    pub keep_ties: bool,
    pub ties: TiesArg,
    pub seed: u64,
    pub run: RunSettings,
    pub out: PathBuf,
}

impl LabelConfig {
    pub fn from_args(args: &LabelArgs) -> Result<LabelConfig, RunError> {
        let run = RunSettings::from_args(&args.run)?;
        let seed = args.sampling.seed.unwrap_or(DEFAULT_SEED);
        let judge = super::judge::options(&args.judge, seed, args.sampling.max_tokens)?;
        for spec in &args.judge.judges {
            super::judge::parse_spec(spec, &args.endpoint)?;
        }
        let constitution = match &args.constitution {
            Some(p) => Some(Constitution::load(p)?),
            None => None,
        };
        let templates = Templates::load(args.templates.as_deref()).map_err(RunError::Template)?;
        Ok(LabelConfig {
            pairs: args.pairs.clone(),
            limit: args.limit,
            constitution,
            constitution_path: args.constitution.clone(),
            templates,
            endpoint: args.endpoint.clone(),
            judge,
            judges: args.judge.judges.clone(),
            keep_ties: args.judge.ties == TiesArg::Keep,
            ties: args.judge.ties,
            seed,
            run,
            out: args.out.clone(),
        })
    }

    /// What must match between this run and one it resumes.
    pub fn fingerprint(&self) -> Result<Fingerprint, RunError> {
        Ok(Fingerprint {
            provider: if self.judges.is_empty() {
                format!(
                    "{}:{}",
                    super::select_provider(&self.endpoint).0.name(),
                    self.endpoint.model.clone().unwrap_or_default()
                )
                .to_lowercase()
            } else {
                self.judges.join(",")
            },
            model: String::new(),
            constitution_sha256: match &self.constitution_path {
                Some(p) => manifest::file_sha256(p)?,
                None => String::new(),
            },
            templates_sha256: self.templates.digest().to_string(),
            params: serde_json::json!({
                "judge_samples": self.judge.samples, "cot": self.judge.cot, "tie_margin": self.judge.tie_margin,
                "ties": format!("{:?}", self.ties).to_lowercase(), "max_tokens": self.judge.cot_max_tokens,
            }),
            rounds: 0,
            preference: "label".into(),
            seed: self.seed,
        })
    }
}
