//! What every HTTP backend holds: client, API root, model, key and how the
//! key is sent, written once.
//!
//! The backends ([`super::openai`], [`super::anthropic`], [`super::gemini`],
//! [`super::hf`]) differ in their bodies, not in how they address a service:
//! each keeps one [`Endpoint`], answers the [`super::Provider`] accessors
//! from it through [`endpoint_accessors!`], and
//! builds every request (completions, batches, model lists) with
//! [`Endpoint::request`], so the key is attached in exactly one place.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use secrecy::SecretString;

use super::http::{self, Bound, ReplyLimit};
use super::registry::{Auth, Entry};
use super::ProviderError;

/// Largest model-list page read; a longer one is cut off and refused (the
/// largest real lists are a few hundred KiB).
pub const MODEL_LIST_MAX_BYTES: u64 = 32 << 20;

/// Most model-list pages followed, so a server that always says "more"
/// cannot loop us.
pub const MAX_MODEL_PAGES: usize = 50;

/// The largest first capacity of a request body's buffer (bodies beyond it
/// grow as they are written).
const MAX_BODY_HINT: usize = 64 << 10;

/// One service as a backend addresses it.
#[derive(Clone)]
pub struct Endpoint {
    /// The `--provider` value (journal keys, manifest, messages).
    pub name: &'static str,
    pub client: reqwest::Client,
    /// The API root requests are built from (never holds a key).
    pub base_url: String,
    pub model: String,
    pub key: Option<SecretString>,
    /// The environment variable the key came from, for error messages.
    pub key_var: Option<String>,
    pub auth: Auth,
    pub limit: ReplyLimit,
    /// The largest request body sent so far, the next body's first capacity.
    body_hint: Arc<AtomicUsize>,
    /// The key's header, made once ([`Auth::header`]).
    auth_header: Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
}

/// A request URL and its parsed form, made once when a backend is built:
/// given a `&str`, reqwest parses the URL again for every request.
#[derive(Clone, Debug)]
pub struct Target {
    text: String,
    /// `None` when the text does not parse; the request then fails the way
    /// reqwest reports a bad URL.
    parsed: Option<reqwest::Url>,
}

impl Target {
    pub fn new(text: String) -> Self {
        let parsed = reqwest::Url::parse(&text).ok();
        Self { text, parsed }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::ops::Deref for Target {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl Endpoint {
    /// An endpoint of the provider `entry` describes (its name and how its
    /// key is sent) at `base_url`.
    pub fn new(
        entry: &Entry,
        client: reqwest::Client,
        base_url: &str,
        model: impl Into<String>,
        key: Option<SecretString>,
        key_var: Option<String>,
    ) -> Self {
        Self {
            name: entry.name,
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.into(),
            key_var,
            auth: entry.auth,
            limit: ReplyLimit::default(),
            body_hint: Arc::new(AtomicUsize::new(1024)),
            auth_header: entry.auth.header(key.as_ref()),
            key,
        }
    }

    /// Bounds reply bodies (`--max-reply-bytes`); default: from each request.
    pub fn with_reply_limit(mut self, limit: ReplyLimit) -> Self {
        self.limit = limit;
        self
    }

    /// A request to `url` with the key attached the service's way.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: impl reqwest::IntoUrl,
    ) -> reqwest::RequestBuilder {
        let req = self.client.request(method, url);
        match &self.auth_header {
            Some((name, value)) => req.header(name.clone(), value.clone()),
            None => self.auth.apply(req, self.key.as_ref()),
        }
    }

    /// A JSON `POST` to `url`, parsed once when the backend was built.
    ///
    /// The body is serialized here rather than by `RequestBuilder::json`
    /// so its buffer starts at the size the previous body reached instead
    /// of growing from 128 bytes through a chain of copies: at latency 0
    /// those copies and the URL parse were a tenth of a request's CPU.
    pub fn post(&self, url: &Target, body: &impl serde::Serialize) -> reqwest::RequestBuilder {
        let builder = match &url.parsed {
            Some(parsed) => self.request(reqwest::Method::POST, parsed.clone()),
            None => self.request(reqwest::Method::POST, url.as_str()),
        };
        let hint = self.body_hint.load(Ordering::Relaxed);
        // Capped: one huge body must not make every later buffer huge
        // (256 requests in flight would each hold that much).
        let mut buf = Vec::with_capacity(hint.min(MAX_BODY_HINT));
        match serde_json::to_writer(&mut buf, body) {
            Ok(()) => {
                if buf.len() > hint {
                    self.body_hint.fetch_max(buf.len(), Ordering::Relaxed);
                }
                builder
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(buf)
            }
            // Keep reqwest's error path for a body that cannot be JSON.
            Err(_) => builder.json(body),
        }
    }

    /// Sends a POST built by [`Self::post`] for `req` and decodes its typed
    /// JSON reply, read under the reply limit for the request's parameters;
    /// the key is scrubbed from any echoed body (see [`super::post_json`]).
    pub async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        http: reqwest::RequestBuilder,
        url: &str,
        req: &super::ChatRequest,
    ) -> Result<(T, super::RateHints), ProviderError> {
        let bound = self.limit.for_request(&req.params);
        super::post_json(http, url, self.key.as_ref(), &bound).await
    }

    /// OpenAI's model list, `GET {base}/models` (ids in `data[].id`), which
    /// every OpenAI-compatible server answers for both its APIs.
    pub async fn openai_models(&self) -> Result<Vec<String>, ProviderError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            data: Vec<Id>,
        }
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        let url = format!("{}/models", self.base_url);
        let req = self.request(reqwest::Method::GET, &url);
        let page: Page = self.get_list(req, &url).await?;
        Ok(page.data.into_iter().map(|m| m.id).collect())
    }

    /// A `GET` of one model-list page, decoded. A rejected key (401/403)
    /// says which variable it came from, or that none was sent.
    pub async fn get_list<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ProviderError> {
        let resp = req
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(url, e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = http::read_prefix(resp, http::ERROR_BODY_BYTES).await;
            let mut body = super::snippet(&bytes, self.key.as_ref());
            if matches!(status.as_u16(), 401 | 403) {
                let hint = match &self.key_var {
                    Some(v) => format!("the key in ${v} was rejected"),
                    None => "no key was sent; set one with --api-key-env VAR".into(),
                };
                body = format!("{hint}. Server said: {body}");
            }
            return Err(ProviderError::Status {
                status: status.as_u16(),
                url: url.to_string(),
                body,
                retry_after: None,
                rate: Box::default(),
            });
        }
        let bound = Bound::new(MODEL_LIST_MAX_BYTES, "for a model list");
        let bytes = http::read_limited(resp, url, &bound).await?;
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed {
            url: url.to_string(),
            reason: format!(
                "not a model list: {e}; body starts: {}",
                super::snippet(&bytes, self.key.as_ref())
            ),
        })
    }
}

/// The four [`super::Provider`] accessors of a backend that keeps its
/// [`Endpoint`] in the field named by the argument.
macro_rules! endpoint_accessors {
    ($field:ident) => {
        fn name(&self) -> &str {
            self.$field.name
        }
        fn model(&self) -> &str {
            &self.$field.model
        }
        fn endpoint(&self) -> String {
            self.$field.base_url.clone()
        }
        fn key_var(&self) -> Option<&str> {
            self.$field.key_var.as_deref()
        }
    };
}
pub(crate) use endpoint_accessors;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::registry::ProviderKind;

    fn endpoint() -> Endpoint {
        let entry = ProviderKind::named("openai")
            .expect("a registry row")
            .entry();
        Endpoint::new(
            entry,
            reqwest::Client::new(),
            "http://127.0.0.1:9/v1/",
            "m",
            Some(SecretString::from("sk-test")),
            None,
        )
    }

    #[test]
    fn post_sends_the_json_bytes_to_the_parsed_url_with_the_key() {
        let ep = endpoint();
        let url = Target::new(format!("{}/chat/completions", ep.base_url));
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x\"y"}]});
        let req = ep.post(&url, &body).build().expect("a request");
        assert_eq!(req.url().as_str(), "http://127.0.0.1:9/v1/chat/completions");
        assert_eq!(req.method(), reqwest::Method::POST);
        assert_eq!(req.headers()["content-type"], "application/json");
        assert_eq!(req.headers()["authorization"], "Bearer sk-test");
        let sent = req.body().and_then(|b| b.as_bytes()).expect("a byte body");
        assert_eq!(sent, serde_json::to_vec(&body).unwrap().as_slice());
    }

    #[test]
    fn the_key_header_is_made_once_sensitive_and_a_bad_key_still_fails() {
        let ep = endpoint();
        let req = ep
            .request(reqwest::Method::GET, "http://127.0.0.1:9/v1/models")
            .build()
            .expect("a request");
        assert!(req.headers()["authorization"].is_sensitive());
        assert!(!format!("{:?}", req.headers()).contains("sk-test"));

        let anthropic = ProviderKind::named("anthropic").expect("a row").entry();
        let key = |k: &str| Some(SecretString::from(k.to_string()));
        let ep = Endpoint::new(
            anthropic,
            reqwest::Client::new(),
            "http://127.0.0.1:9",
            "m",
            key("sk-a"),
            None,
        );
        let req = ep
            .request(reqwest::Method::GET, "http://127.0.0.1:9/v1/models")
            .build()
            .expect("a request");
        assert_eq!(req.headers()["x-api-key"], "sk-a");
        // A key no header can hold is not dropped: the request fails.
        let ep = Endpoint::new(
            anthropic,
            reqwest::Client::new(),
            "http://127.0.0.1:9",
            "m",
            key("sk\nx"),
            None,
        );
        assert!(ep
            .request(reqwest::Method::GET, "http://127.0.0.1:9/v1/models")
            .build()
            .is_err());
    }

    #[test]
    fn the_next_body_starts_at_the_largest_size_sent() {
        let ep = endpoint();
        let url = Target::new("http://127.0.0.1:9/v1/x".into());
        let big = serde_json::json!({ "text": "a".repeat(5000) });
        ep.post(&url, &big).build().expect("a request");
        assert!(ep.body_hint.load(Ordering::Relaxed) >= 5000);
    }

    #[test]
    fn a_url_that_does_not_parse_fails_when_built_not_before() {
        let ep = endpoint();
        let url = Target::new("not a url".into());
        assert_eq!(url.as_str(), "not a url");
        assert!(ep.post(&url, &serde_json::json!({})).build().is_err());
    }
}
