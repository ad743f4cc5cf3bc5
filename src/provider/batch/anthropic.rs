//! Anthropic's Message Batches API.

use std::path::Path;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::{
    decode, read_input, result_lines, BatchApi, BatchCodec, Http, ItemResult, Limits, Poll,
};
use crate::provider::endpoint::Endpoint;
use crate::provider::{ChatRequest, ProviderError};

/// 100,000 requests and 256 MB per batch.
pub const LIMITS: Limits = Limits {
    max_requests: 100_000,
    max_bytes: 256 * 1000 * 1000,
};

/// The Message Batches endpoints of an Anthropic service.
pub struct AnthropicBatch {
    /// The API root (without `/v1`) and key, and the `anthropic-version`
    /// header the backend speaks.
    http: Http,
    api: Arc<dyn BatchCodec>,
}

impl AnthropicBatch {
    pub fn new(ep: Endpoint, version: &'static str, api: Arc<dyn BatchCodec>) -> Self {
        let header = Some(("anthropic-version", version));
        Self {
            http: Http { ep, header },
            api,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/messages/batches{path}", self.http.ep.base_url)
    }

    async fn batch(&self, id: &str) -> Result<Batch, ProviderError> {
        let url = self.url(&format!("/{id}"));
        decode(&url, &self.http.get(&url).await?)
    }
}

#[derive(Deserialize)]
struct Batch {
    id: String,
    processing_status: String,
    #[serde(default)]
    results_url: Option<String>,
    #[serde(default)]
    request_counts: Option<Counts>,
}

#[derive(Deserialize, Default)]
struct Counts {
    #[serde(default)]
    processing: u64,
    #[serde(default)]
    succeeded: u64,
    #[serde(default)]
    errored: u64,
    #[serde(default)]
    canceled: u64,
    #[serde(default)]
    expired: u64,
}

#[derive(Deserialize)]
struct ResultLine {
    custom_id: String,
    result: ResultBody,
}

#[derive(Deserialize)]
struct ResultBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[async_trait]
impl BatchApi for AnthropicBatch {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn line(&self, custom_id: &str, req: &ChatRequest) -> Result<String, ProviderError> {
        Ok(serde_json::json!({
            "custom_id": custom_id,
            "params": self.api.batch_body(req),
        })
        .to_string())
    }

    fn codec(&self) -> &dyn BatchCodec {
        &*self.api
    }

    async fn submit(&self, path: &Path, count: usize) -> Result<String, ProviderError> {
        let content = read_input(path)?;
        // The lines are already `{custom_id, params}` objects: join them
        // into the `requests` array without parsing them again.
        let mut body = String::with_capacity(content.len() + count + 16);
        body.push_str("{\"requests\":[");
        for (i, line) in content.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(line);
        }
        body.push_str("]}");
        let url = self.url("");
        let req = self
            .http
            .request(reqwest::Method::POST, &url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let b: Batch = self.http.json(req, &url).await?;
        Ok(b.id)
    }

    async fn poll(&self, id: &str) -> Result<Poll, ProviderError> {
        let b = self.batch(id).await?;
        if b.processing_status == "ended" {
            return Ok(Poll::Ended {
                status: b.processing_status,
            });
        }
        let c = b.request_counts.unwrap_or_default();
        let done = c.succeeded + c.errored + c.canceled + c.expired;
        Ok(Poll::Running {
            done,
            total: done + c.processing,
        })
    }

    async fn results(&self, id: &str) -> Result<Vec<(String, ItemResult)>, ProviderError> {
        let b = self.batch(id).await?;
        let Some(url) = b.results_url else {
            return Err(ProviderError::Malformed {
                url: self.url(&format!("/{}", b.id)),
                reason: "the batch ended without a results_url".into(),
            });
        };
        let bytes = self.http.get(&url).await?;
        result_lines(&url, &bytes, |line| {
            let l: ResultLine = serde_json::from_str(line)?;
            let r = match (l.result.kind.as_str(), l.result.message) {
                ("succeeded", Some(m)) => match self.api.batch_completion(m) {
                    Ok(c) => ItemResult::Done(c),
                    Err(e) => ItemResult::Failed(format!("unreadable result: {e}")),
                },
                ("errored", _) => ItemResult::Failed(format!(
                    "errored: {}",
                    l.result
                        .error
                        .as_ref()
                        .map_or("no detail".into(), super::describe_error)
                )),
                (kind, _) => ItemResult::Failed(kind.to_string()),
            };
            Ok((l.custom_id, r))
        })
    }
}
