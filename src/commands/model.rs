//! `cai model fetch|list|path`: the embedded local model's file.

use crate::cli::ModelCommand;
use crate::error::RunError;
use crate::provider::model_store;

/// `cai model fetch|list|path`.
pub fn model(cmd: ModelCommand) -> Result<u8, RunError> {
    let fail = |e: model_store::ModelError| RunError::Usage(e.to_string());
    match cmd {
        ModelCommand::Path => {
            println!(
                "{}",
                model_store::default_model_path().map_err(fail)?.display()
            );
        }
        ModelCommand::List => {
            let dir = model_store::cache_dir().map_err(fail)?;
            let models = model_store::list().map_err(fail)?;
            if models.is_empty() {
                eprintln!("cai: no models in {}; run `cai model fetch`", dir.display());
            }
            for m in models {
                println!("{}\t{:.1} MB", m.path.display(), m.bytes as f64 / 1e6);
            }
        }
        ModelCommand::Fetch => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| RunError::Usage(format!("cannot start the async runtime: {e}")))?;
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let path = rt
                .block_on(model_store::fetch_default(progress))
                .map_err(fail)?;
            println!("{}", path.display());
        }
    }
    Ok(0)
}
