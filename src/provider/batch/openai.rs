//! OpenAI's Batch API: Files upload, `/batches`, output and error files.

use std::path::Path;

use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{decode, send, BatchApi, ItemResult, Limits, Poll};
use crate::provider::openai::OpenAi;
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
    api: OpenAi,
}

impl OpenAiBatch {
    pub fn new(api: OpenAi) -> Self {
        Self { api }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let (client, _, key) = self.api.http_parts();
        let mut r = client.request(method, url);
        if let Some(k) = key {
            r = r.bearer_auth(k.expose_secret());
        }
        r
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.api.http_parts().1)
    }

    async fn file_lines(&self, id: &str) -> Result<Vec<(String, ItemResult)>, ProviderError> {
        let url = self.url(&format!("files/{id}/content"));
        let bytes = send(
            self.request(reqwest::Method::GET, &url),
            &url,
            self.api.http_parts().2,
        )
        .await?;
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

    fn parse_body(&self, body: serde_json::Value) -> Result<crate::provider::Completion, String> {
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
            self.api.http_parts().2,
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
            self.api.http_parts().2,
        )
        .await?;
        let batch: Batch = decode(&url, &bytes)?;
        Ok(batch.id)
    }

    async fn poll(&self, id: &str) -> Result<Poll, ProviderError> {
        let url = self.url(&format!("batches/{id}"));
        let bytes = send(
            self.request(reqwest::Method::GET, &url),
            &url,
            self.api.http_parts().2,
        )
        .await?;
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
        let bytes = send(
            self.request(reqwest::Method::GET, &url),
            &url,
            self.api.http_parts().2,
        )
        .await?;
        let b: Batch = decode(&url, &bytes)?;
        debug_assert_eq!(b.id, id);
        let mut out = Vec::new();
        for file in [b.output_file_id, b.error_file_id].into_iter().flatten() {
            out.extend(self.file_lines(&file).await?);
        }
        Ok(out)
    }
}
