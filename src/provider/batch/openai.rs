//! OpenAI's Batch API: Files upload, `/batches`, output and error files.

use std::path::Path;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::{
    decode, read_input, result_lines, BatchApi, BatchCodec, Http, ItemResult, Limits, Poll,
};
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
    http: Http,
    api: Arc<dyn BatchCodec>,
}

impl OpenAiBatch {
    pub fn new(ep: Endpoint, api: Arc<dyn BatchCodec>) -> Self {
        Self {
            http: Http { ep, header: None },
            api,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.http.ep.base_url)
    }

    async fn batch(&self, id: &str) -> Result<Batch, ProviderError> {
        let url = self.url(&format!("batches/{id}"));
        decode(&url, &self.http.get(&url).await?)
    }

    async fn file_lines(&self, id: &str) -> Result<Vec<(String, ItemResult)>, ProviderError> {
        let url = self.url(&format!("files/{id}/content"));
        let bytes = self.http.get(&url).await?;
        result_lines(&url, &bytes, |line| {
            super::openai_result_line(line, |b| self.api.batch_completion(b))
        })
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

    fn codec(&self) -> &dyn BatchCodec {
        &*self.api
    }

    async fn submit(&self, path: &Path, _count: usize) -> Result<String, ProviderError> {
        let content = read_input(path)?.into_bytes();
        let name = path
            .file_name()
            .map_or("batch.jsonl".into(), |n| n.to_string_lossy().into_owned());
        let (boundary, body) = super::multipart(&[("purpose", "batch")], "file", &name, &content);
        let url = self.url("files");
        let req = self
            .http
            .request(reqwest::Method::POST, &url)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        let file: FileObject = self.http.json(req, &url).await?;
        let url = self.url("batches");
        let req = self
            .http
            .request(reqwest::Method::POST, &url)
            .json(&serde_json::json!({
                "input_file_id": file.id,
                "endpoint": ENDPOINT,
                "completion_window": "24h",
            }));
        let batch: Batch = self.http.json(req, &url).await?;
        Ok(batch.id)
    }

    async fn poll(&self, id: &str) -> Result<Poll, ProviderError> {
        let b = self.batch(id).await?;
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
        let b = self.batch(id).await?;
        debug_assert_eq!(b.id, id);
        let mut out = Vec::new();
        for file in [b.output_file_id, b.error_file_id].into_iter().flatten() {
            out.extend(self.file_lines(&file).await?);
        }
        Ok(out)
    }
}
