//! `cai render`: the exact first request of each prompt as the provider
//! would send it, one JSON line per prompt; sends nothing.

use crate::cli::RenderArgs;
use crate::config::generate::Inputs;
use crate::error::RunError;
use crate::input::{InputErrors, PromptReader};
use crate::pipeline;

/// `cai render`: the exact first-stage request of each prompt, as JSON lines.
pub fn render(args: &RenderArgs) -> Result<String, RunError> {
    let inputs = Inputs::load(&args.input)?;
    let params = crate::config::gen_params(&args.sampling)?;
    let plan = crate::config::plan(&args.endpoint, 1)?;
    let provider = crate::provider::build::open_blocking(&plan, |m| eprintln!("cai: {m}"))
        .map_err(crate::config::ConfigError::from)?;
    let mut out = String::new();
    for rec in PromptReader::open(&inputs.spec).map_err(InputErrors::from)? {
        let rec = rec.map_err(InputErrors::from)?;
        let (_, req) =
            pipeline::initial_request(&inputs.constitution, &inputs.templates, &params, &rec.text)
                .map_err(|e| RunError::Template(vec![e]))?;
        let preview = provider
            .preview(&req)
            .map_err(|e| RunError::Usage(e.to_string()))?;
        let line = serde_json::json!({ "id": rec.id, "request": preview });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(out)
}
