//! OpenAI's Batch API: Files upload, `/batches`, output and error files.

use std::path::Path;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::{decode, send, BatchApi, BatchCodec, ItemResult, Limits, Poll};
use crate::provider::endpoint::Endpoint;
use crate::provider::{ChatRequest, ProviderError};

/// 50,000 requests and 200 MB per input file.
pub const LIMITS: Limits = Limits {
    max_requests: 50_000,
    max_bytes: 200 * 1000 * 1000,
};

/// The endpoint every line of a batch asks for.
pub const ENDPOINT: &str = "/v1/chat/completions";

/// The batch endpoints of an OpenAI(-compatible) service.
pub struct OpenAiBatch {
    /// The service's API root and key (the batch endpoints sit beside
    /// `chat/completions`).
    ep: Endpoint,
    api: Arc<dyn BatchCodec>,
}

impl OpenAiBatch {
    pub fn new(ep: Endpoint, api: Arc<dyn BatchCodec>) -> Self {
        Self { ep, api }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.ep.request(method, url)
    }

    /// The body of a `GET` of `url`.
    async fn get(&self, url: &str) -> Result<Vec<u8>, ProviderError> {
        send(
            self.request(reqwest::Method::GET, url),
            url,
            self.ep.key.as_ref(),
        )
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.ep.base_url)
    }

    async fn file_lines(&self, id: &str) -> Result<Vec<(String, ItemResult)>, ProviderError> {
        let url = self.url(&format!("files/{id}/content"));
        let bytes = self.get(&url).await?;
        let text = String::from_utf8_lossy(&bytes);
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let item =
                super::openai_result_line(line, |b| self.api.batch_completion(b)).map_err(|e| {
                    ProviderError::Malformed {
                        url: url.clone(),
                        reason: format!("line {}: {e}", i + 1),
                    }
                })?;
            out.push(item);
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
struct FileObject {
    id: String,
}

#[derive(Deserialize)]
struct Batch {
    id: String,
    status: String,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    request_counts: Option<Counts>,
}

#[derive(Deserialize, Default)]
struct Counts {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    completed: u64,
    #[serde(default)]
    failed: u64,
}

#[async_trait]
impl BatchApi for OpenAiBatch {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn line(&self, custom_id: &str, req: &ChatRequest) -> Result<String, ProviderError> {
        Ok(serde_json::json!({
            "custom_id": custom_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": self.api.batch_body(req),
        })
        .to_string())
    }

    fn parse_body(
        &self,
        body: serde_json::Value,
    ) -> Result<crate::provider::Completion, ProviderError> {
        self.api.batch_completion(body)
    }

    async fn submit(&self, path: &Path, _count: usize) -> Result<String, ProviderError> {
        let content = std::fs::read(path).map_err(|e| {
            ProviderError::Fatal(format!("cannot read batch input {}: {e}", path.display()))
        })?;
        let name = path
            .file_name()
            .map_or("batch.jsonl".into(), |n| n.to_string_lossy().into_owned());
        let (boundary, body) = super::multipart(&[("purpose", "batch")], "file", &name, &content);
        let url = self.url("files");
        let bytes = send(
            self.request(reqwest::Method::POST, &url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body),
            &url,
            self.ep.key.as_ref(),
        )
        .await?;
        let file: FileObject = decode(&url, &bytes)?;
        let url = self.url("batches");
        let bytes = send(
            self.request(reqwest::Method::POST, &url)
                .json(&serde_json::json!({
                    "input_file_id": file.id,
                    "endpoint": ENDPOINT,
                    "completion_window": "24h",
                })),
            &url,
            self.ep.key.as_ref(),
        )
        .await?;
        let batch: Batch = decode(&url, &bytes)?;
        Ok(batch.id)
    }

    async fn poll(&self, id: &str) -> Result<Poll, ProviderError> {
        let url = self.url(&format!("batches/{id}"));
        let bytes = self.get(&url).await?;
        let b: Batch = decode(&url, &bytes)?;
        Ok(match b.status.as_str() {
            "completed" | "expired" | "failed" | "cancelled" => Poll::Ended { status: b.status },
            _ => {
                let c = b.request_counts.unwrap_or_default();
                Poll::Running {
                    done: c.completed + c.failed,
                    total: c.total,
                }
            }
        })
    }

    async fn results(&self, id: &str) -> Result<Vec<(String, ItemResult)>, ProviderError> {
        let url = self.url(&format!("batches/{id}"));
        let bytes = self.get(&url).await?;
        let b: Batch = decode(&url, &bytes)?;
        debug_assert_eq!(b.id, id);
        let mut out = Vec::new();
        for file in [b.output_file_id, b.error_file_id].into_iter().flatten() {
            out.extend(self.file_lines(&file).await?);
        }
        Ok(out)
    }
}
