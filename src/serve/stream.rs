//! Streamed replies (`stream: true`), as server-sent events of
//! `chat.completion.chunk` objects, ending with `data: [DONE]`.
//!
//! Pass-through (`none`) is streamed for real: the upstream streams are
//! opened (with the engine's retries) before the reply's status is sent, so
//! an upstream that refuses is still the client's error status; then every
//! upstream delta is forwarded as it arrives. Other approaches finish their
//! calls first and send the answer as one delta per choice — their answer
//! does not exist before their last call ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::future::{join_all, try_join_all};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::api::{self, ChatCompletionChunk, ChunkChoice, Delta};
use super::approach;
use super::error::ApiError;
use super::record::Recorder;
use super::request::{write_log, Prepared};
use super::Shared;
use crate::provider::{ChatRequest, GenParams, StreamEvent};

/// Builds the events of one reply.
struct Chunks {
    id: String,
    model: String,
    created: u64,
}

impl Chunks {
    fn event(
        &self,
        choices: Vec<ChunkChoice>,
        usage: Option<api::ApiUsage>,
        cai: Option<api::CaiInfo>,
    ) -> Event {
        let chunk = ChatCompletionChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
            cai,
        };
        Event::default().data(serde_json::to_string(&chunk).unwrap_or_default())
    }

    fn delta(
        &self,
        index: u32,
        role: bool,
        content: Option<String>,
        finish: Option<&'static str>,
    ) -> Event {
        self.event(
            vec![ChunkChoice {
                index,
                delta: Delta {
                    role: role.then_some("assistant"),
                    content,
                },
                finish_reason: finish,
                logprobs: None,
            }],
            None,
            None,
        )
    }
}

/// A streamed reply: starts the approach (or the pass-through upstream calls)
/// on their own task and relays its events as `chat.completion.chunk`s.
/// Long because the two producers and the one relay share the channel, the
/// recorder and the in-flight permit, which live exactly as long as this call.
pub async fn respond(
    shared: Arc<Shared>,
    mut p: Prepared,
    recorder: Arc<Recorder>,
    permit: tokio::sync::OwnedSemaphorePermit,
    started: Instant,
) -> Response {
    let engine = shared.engine();
    let chunks = Chunks {
        id: format!("chatcmpl-{}", p.id),
        model: p.model.clone(),
        created: api::now_secs(),
    };
    let (tx, rx) = mpsc::channel::<Event>(64);

    if p.plan.is_passthrough() {
        let opens = (0..p.n).map(|i| {
            let ctx = p.ctx(&shared, &engine, i);
            let req = ChatRequest {
                cache: Default::default(),
                messages: p.messages.clone(),
                params: GenParams {
                    n: None,
                    top_logprobs: None,
                    ..ctx.params.clone()
                },
            };
            let engine = engine.clone();
            async move { engine.open_stream(&req).await }
        });
        let streams = match recorder
            .scope(p.route.clone().scope(try_join_all(opens)))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let err = ApiError::upstream(e, recorder.last_status());
                write_log(&shared, &p, &recorder, err.status, Some(&err), started);
                return err.into_response();
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            for i in 0..p.n {
                if tx.send(chunks.delta(i, true, None, None)).await.is_err() {
                    return;
                }
            }
            let tagged = streams
                .into_iter()
                .enumerate()
                .map(|(i, s)| s.map(move |e| (i as u32, e)).boxed());
            let mut merged = futures::stream::select_all(tagged);
            let mut failure: Option<ApiError> = None;
            while let Some((i, ev)) = merged.next().await {
                let event = match ev {
                    Ok(StreamEvent::Delta(text)) => chunks.delta(i, false, Some(text), None),
                    Ok(StreamEvent::Finish(f)) => {
                        chunks.delta(i, false, None, Some(api::finish_str(&f)))
                    }
                    Ok(StreamEvent::Usage(_)) => continue,
                    Err(e) => {
                        let err = ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream_error",
                            format!("upstream stream failed: {e}"),
                        );
                        let ev = Event::default().data(err.body());
                        failure = Some(err);
                        let _ = tx.send(ev).await;
                        break;
                    }
                };
                if tx.send(event).await.is_err() {
                    // The client left; dropping the streams closes upstream.
                    return;
                }
            }
            finish(&shared, &p, &recorder, &chunks, &tx, failure, started).await;
        });
    } else {
        let runs = p.choices().into_iter().map(|(pipe, i)| {
            let ctx = p.ctx(&shared, &engine, i);
            let steps = &p.plan.0[pipe];
            let messages = &p.messages;
            async move { approach::run(&ctx, steps, messages).await }
        });
        let results = recorder.scope(p.route.clone().scope(join_all(runs))).await;
        p.add_notes(
            results
                .iter()
                .filter_map(|r| r.as_ref().ok().and_then(|a| a.note.as_deref())),
        );
        let mut answers = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(a) => answers.push(a),
                Err(e) => {
                    write_log(&shared, &p, &recorder, e.status, Some(&e), started);
                    return e.into_response();
                }
            }
        }
        tokio::spawn(async move {
            let _permit = permit;
            for (i, a) in answers.into_iter().enumerate() {
                let i = i as u32;
                let events = [
                    chunks.delta(i, true, None, None),
                    chunks.delta(i, false, Some(a.content(p.full_response).to_string()), None),
                    chunks.delta(i, false, None, Some(api::finish_str(&a.finish))),
                ];
                for e in events {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
            finish(&shared, &p, &recorder, &chunks, &tx, None, started).await;
        });
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The usage chunk (when asked for), `[DONE]`, and the log line.
async fn finish(
    shared: &Shared,
    p: &Prepared,
    recorder: &Recorder,
    chunks: &Chunks,
    tx: &mpsc::Sender<Event>,
    failure: Option<ApiError>,
    started: Instant,
) {
    if failure.is_none() && p.include_usage {
        let info = api::CaiInfo {
            approach: p.plan.slug(),
            upstream_calls: recorder.count(),
            note: p.note.clone(),
        };
        let _ = tx
            .send(chunks.event(Vec::new(), Some(recorder.usage()), Some(info)))
            .await;
    }
    let _ = tx.send(Event::default().data("[DONE]")).await;
    let status = failure.as_ref().map_or(StatusCode::OK, |e| e.status);
    write_log(shared, p, recorder, status, failure.as_ref(), started);
}
