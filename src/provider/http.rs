//! Reading HTTP reply bodies with a bound.
//!
//! A broken or hostile server can answer a 16-token request with gigabytes.
//! Every body `cai` reads goes through [`read_limited`] or [`stream_limited`]:
//! chunks are taken one at a time, and the moment the running total passes
//! the bound (or a `Content-Length` announces that it will) reading stops and
//! the response is dropped, which closes the connection instead of draining
//! it. Nothing is buffered whole before it is measured.
//!
//! The bound of a chat reply follows from the request ([`default_reply_bound`]):
//! a floor for JSON framing, ids, usage and error pages, plus a generous
//! allowance per token asked for (`max_tokens × n`), more when
//! log-probabilities were requested. `--max-reply-bytes` replaces it
//! ([`ReplyLimit`]). [`check_reply`] then refuses a reply that fits the byte
//! bound but could not have come from the request: text longer than the
//! asked tokens can spell. Both failures are [`ProviderError::Oversized`],
//! which the engine retries like a malformed body and then turns into a
//! reject. A `completion_tokens` count over what was asked is kept (a proxy
//! sums its calls), with one warning per run.
//!
//! [`stream_limited`] hands each chunk to a callback, so a large download
//! (a model archive, a batch API's result file) goes to disk under its own
//! bound without being held in memory.

use super::{ChatRequest, Completion, GenParams, ProviderError};

/// Body allowance that does not depend on the request: JSON framing, ids,
/// usage, provider metadata, an HTML error page.
pub const REPLY_FLOOR_BYTES: u64 = 1 << 20;
/// Body allowance per token asked for. Average text is about 4 bytes a
/// token; the longest tokens of common vocabularies are a few hundred bytes,
/// and JSON escaping (`\u00XX`) can multiply a byte by six. 1 KiB covers a
/// long reply of awkward tokens with room to spare.
pub const REPLY_BYTES_PER_TOKEN: u64 = 1024;
/// Extra body allowance per token and per requested alternative when
/// log-probabilities are asked for (each alternative repeats its token, its
/// log-probability and its bytes).
pub const LOGPROB_BYTES_PER_ALTERNATIVE: u64 = 512;
/// Most bytes of text one token can decode to. Real vocabularies stay well
/// below this; a reply whose text is longer than `max_tokens` of these was
/// not produced under that limit.
pub const MAX_TEXT_BYTES_PER_TOKEN: u64 = 256;
/// How much of an error reply (non-2xx) is read: enough for the message.
pub const ERROR_BODY_BYTES: u64 = 64 << 10;

/// The byte bound applied to chat replies of one provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyLimit {
    /// `--max-reply-bytes`: replaces the bound derived from the request.
    pub fixed: Option<u64>,
}

impl ReplyLimit {
    pub fn fixed(bytes: Option<u64>) -> Self {
        Self { fixed: bytes }
    }

    /// The bound for one request, and how it was set (for the error message).
    pub fn for_request(&self, params: &GenParams) -> Bound {
        match self.fixed {
            Some(bytes) => Bound {
                bytes,
                basis: "set by --max-reply-bytes".into(),
            },
            None => Bound {
                bytes: default_reply_bound(params),
                basis: format!(
                    "derived from max_tokens {} × {} {}; raise it with --max-reply-bytes",
                    params.max_tokens,
                    choices(params),
                    if choices(params) == 1 {
                        "reply"
                    } else {
                        "replies"
                    }
                ),
            },
        }
    }
}

/// A byte bound and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    pub bytes: u64,
    /// Said after the size in messages, e.g. `set by --max-reply-bytes`.
    pub basis: String,
}

impl Bound {
    pub fn new(bytes: u64, basis: impl Into<String>) -> Self {
        Self {
            bytes,
            basis: basis.into(),
        }
    }
}

/// Completions a request asks for (`n`, at least one).
pub fn choices(params: &GenParams) -> u64 {
    u64::from(params.n.unwrap_or(1).max(1))
}

/// The default body bound for a request: [`REPLY_FLOOR_BYTES`] plus
/// [`REPLY_BYTES_PER_TOKEN`] (and [`LOGPROB_BYTES_PER_ALTERNATIVE`] per
/// requested alternative) for each of the `max_tokens × n` tokens asked for.
pub fn default_reply_bound(params: &GenParams) -> u64 {
    let tokens = u64::from(params.max_tokens).saturating_mul(choices(params));
    let per_token = REPLY_BYTES_PER_TOKEN
        + LOGPROB_BYTES_PER_ALTERNATIVE * u64::from(params.top_logprobs.unwrap_or(0));
    REPLY_FLOOR_BYTES.saturating_add(tokens.saturating_mul(per_token))
}

/// Why a body could not be read in full.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body passed (or announced it would pass) the bound.
    #[error("the reply from {url} {}", size_reason(.bound, *.announced))]
    TooLarge {
        url: String,
        bound: Bound,
        /// The `Content-Length` the server announced, when it gave one
        /// over the bound (then nothing was read).
        announced: Option<u64>,
    },
    /// The connection failed, or timed out, while reading.
    #[error("{0}")]
    Read(ProviderError),
    /// The callback of [`stream_limited`] failed (e.g. a full disk).
    #[error("cannot store the reply from {url}: {source}")]
    Sink {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

/// `passed the bound of 1.0 MiB (1048576 bytes) set by --max-reply-bytes`.
fn size_reason(bound: &Bound, announced: Option<u64>) -> String {
    let what = match announced {
        Some(n) => format!("announced {}, over", human(n)),
        None => "passed".into(),
    };
    format!("{what} the bound of {} {}", human(bound.bytes), bound.basis)
}

/// `1.0 MiB (1048576 bytes)`: readable, and exact for whoever sets a bound.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64;
    let mut unit = "";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({bytes} bytes)")
}

impl From<BodyError> for ProviderError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Read(p) => p,
            BodyError::TooLarge {
                url,
                bound,
                announced,
            } => ProviderError::Oversized {
                url,
                reason: format!("the body {}", size_reason(&bound, announced)),
            },
            BodyError::Sink { url, source } => ProviderError::Transport {
                url,
                reason: source.to_string(),
            },
        }
    }
}

/// Feeds the body of `resp` to `sink` chunk by chunk, stopping with
/// [`BodyError::TooLarge`] as soon as it passes `bound` (the response is
/// dropped, closing the connection). Returns the number of bytes read.
pub async fn stream_limited(
    mut resp: reqwest::Response,
    url: &str,
    bound: &Bound,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<u64, BodyError> {
    let too_large = |announced| BodyError::TooLarge {
        url: url.to_string(),
        bound: bound.clone(),
        announced,
    };
    if let Some(n) = resp.content_length().filter(|&n| n > bound.bytes) {
        return Err(too_large(Some(n)));
    }
    let mut seen = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Read(ProviderError::from_reqwest(url, e)))?
    {
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > bound.bytes {
            return Err(too_large(None));
        }
        sink(&chunk).map_err(|source| BodyError::Sink {
            url: url.to_string(),
            source,
        })?;
    }
    Ok(seen)
}

/// The whole body of `resp` in memory, if it stays within `bound`.
pub async fn read_limited(
    resp: reqwest::Response,
    url: &str,
    bound: &Bound,
) -> Result<Vec<u8>, BodyError> {
    // Reserve what the server announced (already checked against the
    // bound), never more than a modest start.
    let start = resp
        .content_length()
        .unwrap_or(0)
        .min(bound.bytes)
        .min(1 << 20);
    let mut body = Vec::with_capacity(start as usize);
    stream_limited(resp, url, bound, |chunk| {
        body.extend_from_slice(chunk);
        Ok(())
    })
    .await?;
    Ok(body)
}

/// At most the first `max` bytes of a body, for an error message: a body
/// that is longer, or a connection that fails midway, still yields what
/// arrived.
pub async fn read_prefix(mut resp: reqwest::Response, max: u64) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = (max as usize).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() as u64 >= max {
            break;
        }
    }
    body
}

/// [`check_reply`] over every choice of a completion, with the completion
/// tokens its usage reports.
pub fn check_completion(
    url: &str,
    req: &ChatRequest,
    completion: &Completion,
) -> Result<(), ProviderError> {
    check_reply(
        url,
        req,
        std::iter::once(completion.text.as_str()).chain(completion.more.iter().map(String::as_str)),
        completion.usage.map(|u| u.completion_tokens),
    )
}

/// Refuses a parsed reply that the request could not have produced: a text
/// longer than `max_tokens` tokens can spell (the bound that protects
/// memory). `texts` are the reply's choices; `generated` the token count
/// the endpoint reported against `max_tokens`.
///
/// A count over `max_tokens × n` is not refused: optimizing proxies (`cai
/// serve`, optillm) sum every upstream call into one `usage`, and servers
/// that count reasoning tokens report more than the visible text. The
/// count is kept and priced as reported; the first such reply of a run
/// is named once on stderr so an unexpected bill has an explanation.
pub fn check_reply<'a>(
    url: &str,
    req: &ChatRequest,
    texts: impl IntoIterator<Item = &'a str>,
    generated: Option<u64>,
) -> Result<(), ProviderError> {
    let p = &req.params;
    let max_tokens = u64::from(p.max_tokens);
    let text_cap = max_tokens.saturating_mul(MAX_TEXT_BYTES_PER_TOKEN);
    for text in texts {
        let len = text.len() as u64;
        if len > text_cap {
            return Err(ProviderError::Oversized {
                url: url.to_string(),
                reason: format!(
                    "a reply text of {} is longer than max_tokens {} can produce (at most {})",
                    human(len),
                    p.max_tokens,
                    human(text_cap)
                ),
            });
        }
    }
    // One token of slack per choice: some servers count the end-of-sequence
    // token they stopped on.
    let asked = max_tokens.saturating_add(1).saturating_mul(choices(p));
    if let Some(n) = generated.filter(|&n| n > asked) {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!(
                "cai: warning: {url} reports {n} completion tokens for a request of max_tokens {} × {}; kept and priced as reported (a proxy that sums several calls, or reasoning tokens); said once per run",
                p.max_tokens,
                choices(p)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(max_tokens: u32, n: Option<u32>, top_logprobs: Option<u8>) -> GenParams {
        GenParams {
            max_tokens,
            n,
            top_logprobs,
            ..GenParams::default()
        }
    }

    #[test]
    fn default_bound_grows_with_tokens_choices_and_logprobs() {
        let small = default_reply_bound(&params(16, None, None));
        assert_eq!(small, REPLY_FLOOR_BYTES + 16 * REPLY_BYTES_PER_TOKEN);
        assert!(
            small < 2 << 20,
            "a 16-token reply is bounded near the floor"
        );
        assert_eq!(
            default_reply_bound(&params(16, Some(4), None)) - REPLY_FLOOR_BYTES,
            4 * (small - REPLY_FLOOR_BYTES)
        );
        assert!(default_reply_bound(&params(16, None, Some(5))) > small);
        assert_eq!(
            default_reply_bound(&params(u32::MAX, Some(u32::MAX), Some(20))),
            u64::MAX,
            "saturates instead of overflowing"
        );
    }

    #[test]
    fn fixed_limit_replaces_the_derived_one() {
        let p = params(16, None, None);
        let b = ReplyLimit::default().for_request(&p);
        assert_eq!(b.bytes, default_reply_bound(&p));
        assert!(b.basis.contains("max_tokens 16 × 1 reply"), "{}", b.basis);
        assert!(b.basis.contains("--max-reply-bytes"), "{}", b.basis);
        let b = ReplyLimit::fixed(Some(10)).for_request(&p);
        assert_eq!(b.bytes, 10);
    }

    #[test]
    fn replies_longer_than_the_request_could_spell_are_refused_counts_are_kept() {
        let req = ChatRequest {
            cache: Default::default(),
            messages: vec![],
            params: params(16, Some(2), None),
        };
        let fine = "x".repeat(16 * MAX_TEXT_BYTES_PER_TOKEN as usize);
        assert!(check_reply("u", &req, [fine.as_str(), "y"], Some(32)).is_ok());
        let long = format!("{fine}x");
        let err = check_reply("u", &req, ["ok", long.as_str()], None).unwrap_err();
        assert!(matches!(err, ProviderError::Oversized { .. }), "{err}");
        assert!(
            err.to_string().contains("longer than max_tokens 16"),
            "{err}"
        );
        assert!(
            check_reply("u", &req, ["ok"], Some(1000)).is_ok(),
            "a usage count over max_tokens × n is kept, not refused"
        );
    }

    #[test]
    fn sizes_read_in_units_and_bytes() {
        assert_eq!(human(100), "100 bytes");
        assert_eq!(human(1 << 20), "1.0 MiB (1048576 bytes)");
        assert_eq!(human(1536), "1.5 KiB (1536 bytes)");
    }
}
