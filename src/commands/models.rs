//! `cai models`: the model ids an endpoint serves, from its model-list API
//! ([`crate::provider::Provider::list_models`]; the call each provider
//! answers is its row's [`ModelList`] in [`crate::provider::registry`]).

use crate::cli::EndpointArgs;
use crate::config::ConfigError;
use crate::error::RunError;
use crate::provider::build::{self, Flags, Keys};
use crate::provider::registry::ModelList;

/// Lists model ids for the endpoint the arguments describe.
pub fn run(args: &EndpointArgs) -> Result<Vec<String>, RunError> {
    let flags = args.flags();
    let (kind, _) = build::select_provider(&flags);
    if kind.entry().models == ModelList::None {
        return Err(RunError::Usage(format!(
            "--provider {} has no model list; name the model with --model",
            kind.name()
        )));
    }
    // Listing needs no model: a provider without a default one is planned
    // with an empty name, which no list request sends.
    let flags = Flags {
        model: flags.model.or(Some("")),
        ..flags
    };
    let provider = build::plan(&flags, 1, Keys::Required)
        .and_then(|p| p.build())
        .map_err(ConfigError::from)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Usage(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(provider.list_models())
        .map_err(|e| RunError::Endpoint(e.to_string()))
}
