//! The providers' batch APIs: many requests submitted at once, answered
//! within a day at half the price.
//!
//! A [`BatchApi`] speaks one service's protocol: the input line of one
//! request ([`BatchApi::line`]), submitting a file of such lines, polling a
//! batch and reading its results back, each joined to its request by
//! `custom_id`. It makes one attempt per call, like a [`super::Provider`];
//! the staging, the state in the run directory and the retries of failed
//! items live in [`crate::engine::batch`].
//!
//! - **OpenAI** ([`openai`]): the lines (`{custom_id, method, url, body}`)
//!   are uploaded as a file with purpose `batch` (`POST /files`), then
//!   `POST /batches` with endpoint `/v1/chat/completions` and a 24 h
//!   window; `GET /batches/{id}` is polled until the batch is `completed`,
//!   `expired`, `failed` or `cancelled`, and the `output_file_id` and
//!   `error_file_id` contents (`GET /files/{id}/content`) are read. The
//!   same line format is what `vllm run_batch` reads and writes, so
//!   `--batch-export`/`--batch-import` use it too.
//! - **Anthropic** ([`anthropic`]): `POST /v1/messages/batches` with
//!   `requests: [{custom_id, params}]`, `GET /v1/messages/batches/{id}`
//!   until `processing_status` is `ended`, then the JSONL at `results_url`,
//!   whose `result.type` is `succeeded`, `errored`, `canceled` or `expired`.

pub mod anthropic;
pub mod openai;

use std::path::Path;

use async_trait::async_trait;

use super::endpoint::Endpoint;
use super::{ChatRequest, Completion, ProviderError};

/// What a batch API needs of the backend whose requests it carries: the
/// body the backend would post, and how it reads a reply body. The backend
/// implements it and hands itself over (with its [`super::endpoint::Endpoint`]),
/// so the batch code never names a backend type.
pub trait BatchCodec: Send + Sync {
    /// The body a direct request for `req` would carry.
    fn batch_body(&self, req: &ChatRequest) -> serde_json::Value;
    /// Reads one successful result body as the backend reads its replies.
    fn batch_completion(&self, body: serde_json::Value) -> Result<Completion, ProviderError>;
}

/// How much one batch may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_requests: usize,
    /// Bytes of the submitted input (the file, or the request body).
    pub max_bytes: u64,
}

/// What the service returned for one request of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum ItemResult {
    Done(Completion),
    /// Errored, expired or cancelled: the reason, for the reject row if the
    /// request keeps failing.
    Failed(String),
}

/// Where a submitted batch stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Still being processed: requests finished so far, of `total`.
    Running { done: u64, total: u64 },
    /// Ended (completed, expired, cancelled or failed as a whole): its
    /// results can be read; requests without a result count as failed.
    Ended { status: String },
}

/// One service's batch protocol.
#[async_trait]
pub trait BatchApi: Send + Sync {
    /// Name for messages and the manifest (`openai`, `anthropic`).
    fn name(&self) -> &'static str;
    fn limits(&self) -> Limits;
    /// One input line (JSON, no newline) asking for `req` under `custom_id`.
    fn line(&self, custom_id: &str, req: &ChatRequest) -> Result<String, ProviderError>;
    /// The backend whose requests the batches carry.
    fn codec(&self) -> &dyn BatchCodec;
    /// Reads one successful result body (a chat completion, a Message) as
    /// the backend reads its replies.
    fn parse_body(&self, body: serde_json::Value) -> Result<Completion, ProviderError> {
        self.codec().batch_completion(body)
    }
    /// Submits the lines of `path` (`count` of them, within [`Self::limits`])
    /// as one batch; returns its id.
    async fn submit(&self, path: &Path, count: usize) -> Result<String, ProviderError>;
    async fn poll(&self, id: &str) -> Result<Poll, ProviderError>;
    /// The results of an ended batch, as `(custom_id, result)` pairs.
    async fn results(&self, id: &str) -> Result<Vec<(String, ItemResult)>, ProviderError>;
}

/// Reads one line of an OpenAI-format batch output or error file (also
/// `vllm run_batch`'s output): `{custom_id, response: {status_code, body},
/// error}`. `parse` turns a 200 body into a completion; a body it cannot
/// read fails that item, a line that is not JSON fails the file.
pub fn openai_result_line(
    line: &str,
    parse: impl Fn(serde_json::Value) -> Result<Completion, ProviderError>,
) -> Result<(String, ItemResult), serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Line {
        custom_id: String,
        #[serde(default)]
        response: Option<Resp>,
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    #[derive(serde::Deserialize)]
    struct Resp {
        status_code: u16,
        #[serde(default)]
        body: serde_json::Value,
    }
    let l: Line = serde_json::from_str(line)?;
    let result = match (l.response, l.error) {
        (Some(r), None) if r.status_code == 200 => match parse(r.body) {
            Ok(c) => ItemResult::Done(c),
            Err(e) => ItemResult::Failed(format!("unreadable result: {e}")),
        },
        (Some(r), err) => ItemResult::Failed(format!(
            "HTTP {}: {}",
            r.status_code,
            describe_error(err.as_ref().unwrap_or(&r.body))
        )),
        (None, Some(err)) => ItemResult::Failed(describe_error(&err)),
        (None, None) => ItemResult::Failed("no response and no error".into()),
    };
    Ok((l.custom_id, result))
}

/// `code: message` from an error object in any of the shapes the services
/// use (`{code, message}`, `{error: {type, message}}`).
pub(crate) fn describe_error(v: &serde_json::Value) -> String {
    let inner = v.get("error").unwrap_or(v);
    let code = inner
        .get("code")
        .or_else(|| inner.get("type"))
        .and_then(|c| c.as_str());
    let message = inner.get("message").and_then(|m| m.as_str());
    match (code, message) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (None, Some(m)) => m.to_string(),
        (Some(c), None) => c.to_string(),
        (None, None) => {
            let s = v.to_string();
            s.chars().take(200).collect()
        }
    }
}

/// A `multipart/form-data` body with text fields and one file, and its
/// boundary (a handful of lines; not worth reqwest's multipart feature).
pub(crate) fn multipart(
    fields: &[(&str, &str)],
    file_field: &str,
    file_name: &str,
    content: &[u8],
) -> (String, Vec<u8>) {
    use sha2::Digest;
    // A boundary derived from the content cannot occur inside it by chance.
    let digest = sha2::Sha256::digest(content);
    let boundary = format!("cai-{}", crate::digest::hex(&digest[..12]));
    let mut body = Vec::with_capacity(content.len() + 512);
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; filename=\"{file_name}\"\r\nContent-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (boundary, body)
}

/// The HTTP side of a batch protocol: the service's root and key, and a
/// header every call carries (Anthropic's API version).
pub(crate) struct Http {
    pub ep: Endpoint,
    pub header: Option<(&'static str, &'static str)>,
}

impl Http {
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.ep.request(method, url);
        match self.header {
            Some((name, value)) => req.header(name, value),
            None => req,
        }
    }

    /// Sends `req` (to `url`) and reads the whole body.
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Vec<u8>, ProviderError> {
        send(req, url, self.ep.key.as_ref()).await
    }

    /// Sends `req` (to `url`) and decodes its JSON reply.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ProviderError> {
        decode(url, &self.send(req, url).await?)
    }

    /// The body of a `GET` of `url`.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, ProviderError> {
        self.send(self.request(reqwest::Method::GET, url), url)
            .await
    }
}

/// The lines of a batch input file, as the engine staged them.
pub(crate) fn read_input(path: &Path) -> Result<String, ProviderError> {
    std::fs::read_to_string(path).map_err(|e| {
        ProviderError::Fatal(format!("cannot read batch input {}: {e}", path.display()))
    })
}

/// Reads every non-blank line of a results file fetched from `url` with
/// `parse`; a line it cannot read fails the whole file, naming the line.
pub(crate) fn result_lines(
    url: &str,
    bytes: &[u8],
    parse: impl Fn(&str) -> Result<(String, ItemResult), serde_json::Error>,
) -> Result<Vec<(String, ItemResult)>, ProviderError> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse(line).map_err(|e| ProviderError::Malformed {
            url: url.to_string(),
            reason: format!("line {}: {e}", i + 1),
        })?);
    }
    Ok(out)
}

/// Sends one request of the batch protocol and reads the whole body, mapping
/// failures to [`ProviderError`] like a completion request.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    url: &str,
    secret: Option<&secrecy::SecretString>,
) -> Result<Vec<u8>, ProviderError> {
    let resp = super::send_ok(req, url, secret, super::http::ERROR_BODY_BYTES).await?;
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ProviderError::from_reqwest(url, e))?;
    Ok(bytes.to_vec())
}

/// Decodes a JSON reply of the batch protocol.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    url: &str,
    bytes: &[u8],
) -> Result<T, ProviderError> {
    serde_json::from_slice(bytes).map_err(|e| ProviderError::Malformed {
        url: url.to_string(),
        reason: format!("{e}; body starts: {}", super::snippet(bytes, None)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_of_every_shape_are_read() {
        let ok = r#"{"id":"r1","custom_id":"a","response":{"status_code":200,"body":{"x":1}},"error":null}"#;
        let (id, r) = openai_result_line(ok, |_| Ok(Completion::default())).unwrap();
        assert_eq!(
            (id.as_str(), r),
            ("a", ItemResult::Done(Completion::default()))
        );
        let bad = r#"{"custom_id":"b","response":{"status_code":500,"body":{"error":{"message":"boom","type":"server_error"}}},"error":null}"#;
        let (_, r) = openai_result_line(bad, |_| Ok(Completion::default())).unwrap();
        assert_eq!(r, ItemResult::Failed("HTTP 500: server_error: boom".into()));
        let expired = r#"{"custom_id":"c","response":null,"error":{"code":"batch_expired","message":"not done in time"}}"#;
        let (_, r) = openai_result_line(expired, |_| Ok(Completion::default())).unwrap();
        assert_eq!(
            r,
            ItemResult::Failed("batch_expired: not done in time".into())
        );
        assert!(openai_result_line("{", |_| Ok(Completion::default())).is_err());
    }
}
