//! `cai models`: the model ids an endpoint serves, from its model-list API.
//!
//! OpenAI-compatible services and presets: `GET {base}/models` (bearer
//! key). Anthropic: `GET {base}/v1/models` (`x-api-key`). Gemini: `GET
//! {base}/v1beta/models` (`x-goog-api-key`), names without the `models/`
//! prefix. Pages are followed, each read under [`MODEL_LIST_MAX_BYTES`]
//! (the largest real lists are a few hundred KiB). The Hugging Face `generate` protocol and
//! the embedded model have no such list.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::cli::{EndpointArgs, ProviderKind};
use crate::config::{self, ConfigError};
use crate::error::RunError;
use crate::provider::http::{self, Bound};
use crate::provider::{anthropic, gemini, ProviderError};

/// Most pages followed, so a server that always says "more" cannot loop us.
const MAX_PAGES: usize = 50;
/// Largest model-list page read; a longer one is cut off and refused.
pub const MODEL_LIST_MAX_BYTES: u64 = 32 << 20;

#[derive(Deserialize)]
struct OpenAiList {
    #[serde(default)]
    data: Vec<IdEntry>,
}

#[derive(Deserialize)]
struct IdEntry {
    id: String,
}

#[derive(Deserialize)]
struct AnthropicList {
    #[serde(default)]
    data: Vec<IdEntry>,
    #[serde(default)]
    has_more: bool,
    last_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiList {
    #[serde(default)]
    models: Vec<GeminiModel>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct GeminiModel {
    name: String,
}

/// Lists model ids for the endpoint the arguments describe.
pub fn run(args: &EndpointArgs) -> Result<Vec<String>, RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Usage(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(list(args))
}

async fn get<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    url: &str,
    key: Option<&SecretString>,
    key_var: Option<&str>,
) -> Result<T, RunError> {
    let fail = |e: ProviderError| RunError::Endpoint(e.to_string());
    let resp = req
        .send()
        .await
        .map_err(|e| fail(ProviderError::from_reqwest(url, e)))?;
    let status = resp.status();
    let bytes = if status.is_success() {
        let bound = Bound::new(MODEL_LIST_MAX_BYTES, "for a model list");
        http::read_limited(resp, url, &bound)
            .await
            .map_err(|e| fail(e.into()))?
    } else {
        http::read_prefix(resp, http::ERROR_BODY_BYTES).await
    };
    let body = crate::provider::snippet(&bytes, key);
    if matches!(status.as_u16(), 401 | 403) {
        let hint = key_var
            .map(|v| format!("the key in ${v} was rejected"))
            .unwrap_or_else(|| "no key was sent; set one with --api-key-env VAR".into());
        return Err(RunError::Endpoint(format!(
            "{url} answered HTTP {status}: {hint}. Server said: {body}"
        )));
    }
    if !status.is_success() {
        return Err(RunError::Endpoint(format!(
            "{url} answered HTTP {status}: {body}"
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        RunError::Endpoint(format!(
            "malformed model list from {url}: {e}; body starts: {body}"
        ))
    })
}

async fn list(args: &EndpointArgs) -> Result<Vec<String>, RunError> {
    let (kind, _) = config::select_provider(args);
    if let Some(url) = args.base_url() {
        reqwest::Url::parse(url).map_err(|e| {
            ConfigError::flag("--base-url", format!("`{url}` is not a valid URL: {e}"))
        })?;
    }
    let timeout = std::time::Duration::from_secs_f64(args.timeout.clamp(1.0, 600.0));
    let client = config::http_client(timeout, 1)?;
    let mut ids = Vec::new();
    match kind {
        ProviderKind::Openai | ProviderKind::Preset(_) => {
            let preset = kind
                .preset()
                .ok_or_else(|| ConfigError::UnknownProvider(kind.name().to_string()))?;
            let public = args.base_url().is_none() && preset.is_hosted();
            let (key, var) = config::read_key(args, kind, public)?;
            let base = args.base_url().unwrap_or(preset.base_url);
            let url = format!("{}/models", base.trim_end_matches('/'));
            let mut req = client.get(&url);
            if let Some(k) = &key {
                req = req.bearer_auth(k.expose_secret());
            }
            let l: OpenAiList = get(req, &url, key.as_ref(), var.as_deref()).await?;
            ids.extend(l.data.into_iter().map(|m| m.id));
        }
        ProviderKind::Anthropic => {
            let (key, var) = config::read_key(args, kind, args.base_url().is_none())?;
            let root = anthropic::api_root(args.base_url().unwrap_or(anthropic::ANTHROPIC_BASE));
            let url = format!("{root}/v1/models");
            let mut after: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let mut req = client
                    .get(&url)
                    .query(&[("limit", "1000")])
                    .header("anthropic-version", anthropic::ANTHROPIC_VERSION);
                if let Some(a) = &after {
                    req = req.query(&[("after_id", a.as_str())]);
                }
                if let Some(k) = &key {
                    req = req.header("x-api-key", k.expose_secret());
                }
                let l: AnthropicList = get(req, &url, key.as_ref(), var.as_deref()).await?;
                ids.extend(l.data.into_iter().map(|m| m.id));
                match (l.has_more, l.last_id) {
                    (true, Some(last)) => after = Some(last),
                    _ => break,
                }
            }
        }
        ProviderKind::Gemini => {
            let (key, var) = config::read_key(args, kind, args.base_url().is_none())?;
            let root = gemini::api_root(args.base_url().unwrap_or(gemini::GEMINI_BASE));
            let url = format!("{root}/v1beta/models");
            let mut page: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let mut req = client.get(&url).query(&[("pageSize", "1000")]);
                if let Some(p) = &page {
                    req = req.query(&[("pageToken", p.as_str())]);
                }
                if let Some(k) = &key {
                    req = req.header("x-goog-api-key", k.expose_secret());
                }
                let l: GeminiList = get(req, &url, key.as_ref(), var.as_deref()).await?;
                ids.extend(l.models.into_iter().map(|m| {
                    m.name
                        .strip_prefix("models/")
                        .map(str::to_string)
                        .unwrap_or(m.name)
                }));
                match l.next_page_token.filter(|t| !t.is_empty()) {
                    Some(t) => page = Some(t),
                    None => break,
                }
            }
        }
        ProviderKind::Hf | ProviderKind::Local => {
            return Err(RunError::Usage(format!(
                "--provider {} has no model list; name the model with --model",
                kind.name()
            )))
        }
    }
    Ok(ids)
}
