//! The generation loop: one thread owns every running sequence and advances
//! them together, one batched forward pass per step.
//!
//! Each step takes one token from every sequence that is generating and
//! prompt chunks from sequences still reading their prompt, oldest first,
//! up to [`STEP_TOKENS`] rows in all, so a long prompt never stalls the
//! others for more than a chunk and earlier requests finish first. A new
//! request starts from the longest prefix of its tokens held by the
//! [`PrefixCache`] or by a running sequence; a finished sequence's KV state
//! goes into the cache. A request whose caller went away is dropped at the
//! next step.
//!
//! A reply cut off by its token limit is remembered ([`Suspended`]: the
//! sampler's state and the text so far; its KV state is in the cache). The
//! engine retries such a reply with a doubled limit; when that request
//! arrives (same prompt, same sampling parameters, a larger limit) it
//! resumes where the first one stopped instead of generating the same
//! tokens again. Sampling is seeded, so the result is exactly what a fresh
//! generation with the larger limit gives.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::cache::{common_prefix, PrefixCache};
use crate::model::{Scratch, Seq, Session, PREFILL_CHUNK};
use crate::sampling::Sampler;
use crate::{
    Finish, GenStats, Generation, Inner, LocalError, Sampling, TokenLogprob, DEFAULT_SEED,
};

/// Most rows (tokens of all sequences) in one step.
pub const STEP_TOKENS: usize = PREFILL_CHUNK;
/// Fewest prompt tokens worth waiting for a running sequence to compute
/// (a step is up to [`STEP_TOKENS`] rows, so this is a fraction of one).
const SHARE_MIN: usize = 32;
/// Generated positions whose candidates may be reported as log-probabilities
/// when the tokens before them carry no letter or digit (`(` before `A`).
const LOGPROB_POSITIONS: usize = 3;

/// What a request's caller gets back.
pub type Outcome = Result<Generation, LocalError>;

/// One request for the loop: the prompt's tokens and how to sample.
pub struct Job {
    pub ids: Vec<u32>,
    pub params: Sampling,
    pub reply: oneshot::Sender<Outcome>,
}

/// Counters shared with the provider, for tests and benchmarks.
#[derive(Default)]
pub struct Stats {
    /// Bytes held by the prefix cache now, and the most it ever held.
    pub cache_bytes: AtomicUsize,
    pub cache_peak: AtomicUsize,
    /// Prompt tokens taken from cached or running sequences.
    pub reused_tokens: AtomicU64,
    /// Prompt tokens run through the model.
    pub prefilled_tokens: AtomicU64,
    /// Cut-off replies continued by a retry with a larger token limit.
    pub resumed: AtomicU64,
    /// Steps run and rows in them (rows / steps is the mean batch).
    pub steps: AtomicU64,
    pub rows: AtomicU64,
}

/// Replies cut off by the token limit kept for a retry with a larger
/// limit; the oldest goes first.
const SUSPENDED_MAX: usize = 16;

/// First-token log-probabilities being collected.
#[derive(Clone)]
struct Logprobs {
    k: usize,
    /// Text and log-probability of the generated tokens so far.
    prefix: String,
    prefix_lp: f64,
    found: Vec<TokenLogprob>,
    done: bool,
}

struct Running {
    job: Job,
    sess: Session,
    sampler: Sampler,
    /// Tokens the reply may still have.
    budget: usize,
    /// The sampled token not yet fed to the model.
    next: Option<u32>,
    /// Every token sampled so far, and their text.
    generated: Vec<u32>,
    out: Vec<u8>,
    stats: GenStats,
    admitted: Instant,
    first_token: Option<Instant>,
    logprobs: Option<Logprobs>,
    stops: Vec<Vec<u8>>,
    /// An end token or a stop string ended the reply.
    ended: bool,
}

impl Running {
    fn prefilling(&self) -> bool {
        self.next.is_none() && !self.ended
    }
}

/// A reply stopped by its token limit, ready to go on: everything a
/// [`Running`] needs except its KV state, which is in the cache under
/// `tokens`.
struct Suspended {
    /// The prompt and the generated tokens whose KV state was computed.
    tokens: Vec<u32>,
    prompt_len: usize,
    params: Sampling,
    sampler: Sampler,
    next: u32,
    generated: Vec<u32>,
    out: Vec<u8>,
    completion_tokens: usize,
    logprobs: Option<Logprobs>,
}

/// Whether two requests sample alike apart from their token limits.
fn same_sampling(a: &Sampling, b: &Sampling) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    a.max_tokens = 0;
    b.max_tokens = 0;
    a.seed = Some(a.seed.unwrap_or(DEFAULT_SEED));
    b.seed = Some(b.seed.unwrap_or(DEFAULT_SEED));
    a == b
}

/// Runs until every sender is gone and no sequence is left.
pub fn run(
    inner: Arc<Inner>,
    rx: Receiver<Job>,
    max_batch: usize,
    mut cache: PrefixCache,
    stats: Arc<Stats>,
) {
    let mut running: Vec<Running> = Vec::new();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut scratch = Scratch::default();
    let mut suspended: VecDeque<Suspended> = VecDeque::new();
    let mut open = true;
    loop {
        if running.is_empty() && waiting.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        running.retain(|r| !r.job.reply.is_closed());
        waiting.retain(|j| !j.reply.is_closed());
        let mut next = 0;
        while running.len() < max_batch && next < waiting.len() {
            if waits_for_shared_prefix(&waiting[next], &running, &cache) {
                next += 1;
                continue;
            }
            let Some(job) = waiting.remove(next) else {
                break;
            };
            let job = match resume(&inner, job, &mut cache, &mut suspended, &stats) {
                Ok(r) => {
                    running.push(r);
                    continue;
                }
                Err(job) => job,
            };
            if let Some(r) = admit(&inner, job, &mut cache, &mut running, &stats) {
                running.push(r);
            }
        }
        if running.is_empty() {
            continue;
        }
        if let Err(e) = step(&inner, &mut running, &mut scratch, &stats) {
            // A failed pass leaves every session in doubt: fail them all.
            for r in running.drain(..) {
                let _ = r.job.reply.send(Err(LocalError::Inference(e.to_string())));
            }
            continue;
        }
        let mut i = 0;
        while i < running.len() {
            if let Some(finish) = finished(&running[i]) {
                let r = running.swap_remove(i);
                complete(&inner, r, finish, &mut cache, &mut suspended, &stats);
            } else {
                i += 1;
            }
        }
        // Keep admission order (oldest first) for fair prefill scheduling.
        running.sort_by_key(|r| r.admitted);
    }
}

/// Whether `job` should stay queued until a sequence still reading its
/// prompt has computed the prefix they share: true when that sequence will
/// hold at least [`SHARE_MIN`] more of `job`'s tokens than any sequence or
/// cache entry holds now. The prompts of a run arrive together and share
/// the system message and few-shot block; admitting them at once would
/// compute that block once per prompt. The wait ends as soon as the prefix
/// is there (or its sequence is gone), so no request waits for long.
fn waits_for_shared_prefix(job: &Job, running: &[Running], cache: &PrefixCache) -> bool {
    let max_reuse = job.ids.len().saturating_sub(1);
    let coming = running
        .iter()
        .filter(|r| r.prefilling())
        .map(|r| common_prefix(&r.job.ids, &job.ids).min(max_reuse))
        .max()
        .unwrap_or(0);
    if coming < SHARE_MIN {
        return false;
    }
    let held = running
        .iter()
        .map(|r| common_prefix(r.sess.tokens(), &job.ids).min(max_reuse))
        .max()
        .unwrap_or(0)
        .max(cache.longest_len(&job.ids, max_reuse));
    coming >= held + SHARE_MIN
}

/// Continues a suspended reply when `job` is its retry with a larger
/// token limit and the cache still holds its whole KV state; gives the job
/// back otherwise.
fn resume(
    inner: &Inner,
    job: Job,
    cache: &mut PrefixCache,
    suspended: &mut VecDeque<Suspended>,
    stats: &Stats,
) -> Result<Running, Job> {
    let Some(at) = suspended.iter().position(|s| {
        s.tokens[..s.prompt_len] == job.ids[..]
            && same_sampling(&s.params, &job.params)
            && job.params.max_tokens as usize > s.completion_tokens
    }) else {
        return Err(job);
    };
    let s = suspended.remove(at).expect("found above");
    let held = s.tokens.len();
    let sess = match cache.longest(&s.tokens, held) {
        Some((sess, n)) if n == held => sess.prefix(n),
        // Evicted: generate from the start (the same reply, just slower).
        _ => return Err(job),
    };
    let budget = budget(inner, &job);
    stats
        .reused_tokens
        .fetch_add(sess.len() as u64, Ordering::Relaxed);
    stats.resumed.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let stops = stop_bytes(&job.params);
    Ok(Running {
        stats: GenStats {
            prompt_tokens: job.ids.len(),
            completion_tokens: s.completion_tokens,
            cached_tokens: sess.len(),
            ..GenStats::default()
        },
        sess,
        sampler: s.sampler,
        budget,
        next: Some(s.next),
        generated: s.generated,
        out: s.out,
        admitted: now,
        first_token: Some(now),
        logprobs: s.logprobs,
        stops,
        ended: false,
        job,
    })
}

/// Tokens `job`'s reply may have: its `max_tokens`, within the context.
fn budget(inner: &Inner, job: &Job) -> usize {
    let context = inner.model.cfg.context;
    (job.params.max_tokens as usize).min(context.saturating_sub(job.ids.len()))
}

fn stop_bytes(p: &Sampling) -> Vec<Vec<u8>> {
    p.stop
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec())
        .collect()
}

/// Starts a request from the longest prefix held anywhere; `None` when it
/// was answered at once (an empty budget).
fn admit(
    inner: &Inner,
    job: Job,
    cache: &mut PrefixCache,
    running: &mut [Running],
    stats: &Stats,
) -> Option<Running> {
    let admitted = Instant::now();
    let p = &job.params;
    let budget = budget(inner, &job);
    let mut stats_one = GenStats {
        prompt_tokens: job.ids.len(),
        ..GenStats::default()
    };
    if budget == 0 {
        let generation = Generation {
            text: String::new(),
            tokens: Vec::new(),
            finish: Finish::Length,
            first_token_logprobs: None,
            stats: stats_one,
        };
        let _ = job.reply.send(Ok(generation));
        return None;
    }
    // At least the last prompt token is run, for the first logits.
    let max_reuse = job.ids.len() - 1;
    let from_running = running
        .iter_mut()
        .map(|r| {
            let m = common_prefix(r.sess.tokens(), &job.ids).min(max_reuse);
            (r, m)
        })
        .max_by_key(|(_, n)| *n);
    let cached = cache.longest(&job.ids, max_reuse);
    let sess = match (cached, from_running) {
        (Some((s, n)), Some((_, m))) if n >= m => s.prefix(n),
        (_, Some((r, m))) if m > 0 => {
            // Share the running sequence's positions rather than copy them
            // (the prompts of a run share a long system and few-shot block).
            let cap = r.sess.cap;
            r.sess.freeze(cap);
            r.sess.prefix(m)
        }
        (Some((s, n)), _) => s.prefix(n),
        _ => inner.model.session(),
    };
    stats_one.cached_tokens = sess.len();
    stats
        .reused_tokens
        .fetch_add(sess.len() as u64, Ordering::Relaxed);
    let logprobs = p.top_logprobs.filter(|&k| k > 0).map(|k| Logprobs {
        k: usize::from(k),
        prefix: String::new(),
        prefix_lp: 0.0,
        found: Vec::new(),
        done: false,
    });
    let stops = stop_bytes(p);
    Some(Running {
        sampler: Sampler::new(p.temperature, p.top_p, p.seed.unwrap_or(DEFAULT_SEED)),
        sess,
        budget,
        next: None,
        generated: Vec::new(),
        out: Vec::new(),
        stats: stats_one,
        admitted,
        first_token: None,
        logprobs,
        stops,
        ended: false,
        job,
    })
}

/// One batched forward pass, then one sampled token for every sequence
/// whose logits it produced.
fn step(
    inner: &Inner,
    running: &mut [Running],
    scratch: &mut Scratch,
    stats: &Stats,
) -> Result<(), LocalError> {
    // Rows: one per generating sequence, then prompt chunks oldest first.
    let decoding = running.iter().filter(|r| !r.prefilling()).count();
    let mut room = STEP_TOKENS.saturating_sub(decoding).max(1);
    let mut take = vec![0usize; running.len()];
    for (r, n) in running.iter().zip(take.iter_mut()) {
        if r.prefilling() {
            *n = (r.job.ids.len() - r.sess.len())
                .min(PREFILL_CHUNK)
                .min(room);
            room -= *n;
        } else {
            *n = 1;
        }
    }
    let mut seqs: Vec<Seq<'_>> = Vec::with_capacity(running.len());
    let mut want: Vec<usize> = Vec::with_capacity(running.len());
    let mut prefilled = 0;
    for (i, (r, &n)) in running.iter_mut().zip(&take).enumerate() {
        if n == 0 {
            continue;
        }
        let (tokens, logits): (&[u32], bool) = match &r.next {
            Some(t) => (std::slice::from_ref(t), true),
            None => {
                let from = r.sess.len();
                prefilled += n;
                (&r.job.ids[from..from + n], from + n == r.job.ids.len())
            }
        };
        if logits {
            want.push(i);
        }
        seqs.push(Seq {
            sess: &mut r.sess,
            tokens,
            logits,
        });
    }
    let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
    inner.model.forward_batch(&mut seqs, scratch)?;
    drop(seqs);
    stats.steps.fetch_add(1, Ordering::Relaxed);
    stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
    stats
        .prefilled_tokens
        .fetch_add(prefilled as u64, Ordering::Relaxed);
    let vocab = inner.model.cfg.vocab;
    for (row, &i) in want.iter().enumerate() {
        let logits = &scratch.logits[row * vocab..(row + 1) * vocab];
        let r = &mut running[i];
        let tok = r.sampler.sample(logits);
        r.generated.push(tok);
        if let Some(lp) = r.logprobs.as_mut().filter(|l| !l.done) {
            collect_logprobs(inner, lp, logits, tok, r.stats.completion_tokens);
        }
        let now = Instant::now();
        if r.first_token.is_none() {
            r.first_token = Some(now);
            r.stats.prefill = now - r.admitted;
        }
        r.stats.completion_tokens += 1;
        let tk = &inner.tokenizer;
        if tk.is_end(tok) {
            r.next = None;
            r.ended = true;
            continue;
        }
        let before = r.out.len();
        if !tk.is_control(tok) {
            r.out.extend_from_slice(tk.token_bytes(tok));
        }
        let longest = r.stops.iter().map(Vec::len).max().unwrap_or(0);
        let from = before.saturating_sub(longest);
        if let Some(cut) = find_stop(&r.out, &r.stops, from) {
            r.out.truncate(cut);
            r.next = None;
            r.ended = true;
            continue;
        }
        r.next = Some(tok);
    }
    Ok(())
}

/// How a sequence ended, if it did.
fn finished(r: &Running) -> Option<Finish> {
    if r.ended {
        Some(Finish::Stop)
    } else if r.next.is_some() && r.stats.completion_tokens >= r.budget {
        Some(Finish::Length)
    } else {
        None
    }
}

fn complete(
    inner: &Inner,
    mut r: Running,
    finish: Finish,
    cache: &mut PrefixCache,
    suspended: &mut VecDeque<Suspended>,
    stats: &Stats,
) {
    if let Some(first) = r.first_token {
        r.stats.decode = first.elapsed();
    }
    if let (Finish::Length, Some(next)) = (&finish, r.next) {
        if suspended.len() == SUSPENDED_MAX {
            suspended.pop_front();
        }
        suspended.push_back(Suspended {
            tokens: r.sess.tokens().to_vec(),
            prompt_len: r.job.ids.len(),
            params: r.job.params.clone(),
            sampler: r.sampler,
            next,
            generated: r.generated.clone(),
            out: r.out.clone(),
            completion_tokens: r.stats.completion_tokens,
            logprobs: r.logprobs.clone(),
        });
    }
    let first_token_logprobs = r.logprobs.take().map(|mut lp| {
        if !lp.done && !lp.prefix.is_empty() {
            // Generation ended inside the prefix: it is a candidate itself.
            lp.found.push(TokenLogprob {
                token: lp.prefix.clone(),
                logprob: lp.prefix_lp,
            });
        }
        lp.found
            .sort_by(|a, b| b.logprob.total_cmp(&a.logprob).then(a.token.cmp(&b.token)));
        lp.found
    });
    let mut text = String::from_utf8_lossy(&r.out).into_owned();
    if inner.tokenizer.strips_leading_space() && text.starts_with(' ') {
        text.remove(0);
    }
    let generation = Generation {
        text,
        tokens: r.generated,
        finish,
        first_token_logprobs,
        stats: r.stats,
    };
    let _ = r.job.reply.send(Ok(generation));
    cache.insert(r.sess);
    let bytes = cache.bytes();
    stats.cache_bytes.store(bytes, Ordering::Relaxed);
    stats.cache_peak.fetch_max(bytes, Ordering::Relaxed);
}

/// The earliest start of any stop string in `text[from..]`.
fn find_stop<S: AsRef<[u8]>>(text: &[u8], stops: &[S], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let s = s.as_ref();
            text.get(from..)?
                .windows(s.len())
                .position(|w| w == s)
                .map(|i| from + i)
        })
        .min()
}

/// Adds the top candidates of the position just sampled (`position`
/// tokens into the reply). While the sampled token has no letter or digit
/// (an opening bracket, a space) the next position's candidates are added
/// too, prefixed with it and with its log-probability added, so a judge
/// that answers `(A)` is read as surely as one that answers `A`.
fn collect_logprobs(
    inner: &Inner,
    lp: &mut Logprobs,
    logits: &[f32],
    chosen: u32,
    position: usize,
) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let mut top: Vec<u32> = (0..logits.len() as u32).collect();
    let k = lp.k.min(top.len());
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < top.len() {
        top.select_nth_unstable_by(k, by_logit);
        top.truncate(k);
    }
    top.sort_unstable_by(by_logit);
    let tk = &inner.tokenizer;
    let text = |id: u32| tk.display_text(id);
    let logprob = |id: u32| f64::from(logits[id as usize]) - log_z;
    let chosen_text = text(chosen);
    let transparent = !tk.is_end(chosen)
        && position + 1 < LOGPROB_POSITIONS
        && !chosen_text.chars().any(char::is_alphanumeric);
    for &id in &top {
        if transparent && id == chosen {
            continue;
        }
        lp.found.push(TokenLogprob {
            token: format!("{}{}", lp.prefix, text(id)),
            logprob: lp.prefix_lp + logprob(id),
        });
    }
    if transparent {
        lp.prefix.push_str(&chosen_text);
        lp.prefix_lp += logprob(chosen);
    } else {
        lp.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_token_boundaries() {
        let stops: Vec<&[u8]> = vec![b"\nUser:", b"END"];
        assert_eq!(find_stop(b"hello\nUser: hi", &stops, 0), Some(5));
        assert_eq!(find_stop(b"xxEND\nUser:", &stops, 0), Some(2));
        assert_eq!(find_stop(b"nothing here", &stops, 3), None);
    }
}
