//! The HTTP surface: `fn app(state) -> Router` (tested in-process, served by `serve-local`).
//! Handlers validate, tokenize, hand requests to the engine and turn its events into OpenAI
//! responses or server-sent-event streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower_http::catch_panic::CatchPanicLayer;

use super::api::{check_top, ChatRequest, CompletionRequest, Generation, Prompt};
use super::chat::ChatTemplate;
use super::engine::{EngineHandle, EngineRequest, Event, FinishReason};
use super::error::{ApiError, ApiJson};
use super::logprobs::TokenLogprob;
use super::metrics::Metrics;
use super::text::TextStream;
use crate::tokenizer::Tokenizer;

/// Default `max_tokens` of `/v1/completions` (OpenAI's).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// Everything the handlers share.
pub struct ServerState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// The name clients pass as `model`.
    pub model_id: String,
    /// Positions a request may use in all (prompt + generated).
    pub context: usize,
    pub chat: Option<ChatTemplate>,
    /// End-of-sequence ids (completions stop on them).
    pub eos_ids: Vec<u32>,
    /// End-of-sequence plus end-of-turn ids (chat stops on them).
    pub chat_stop_ids: Vec<u32>,
    pub max_body_bytes: usize,
    pub metrics: Metrics,
}

/// Shared handler state.
pub type AppState = Arc<ServerState>;

/// The router with every endpoint, the body limit and panic isolation.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

fn panic_response(p: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    ApiError::internal(format!("internal error: {what}")).into_response()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Counts the answer under `endpoint` and returns it.
fn respond(st: &ServerState, endpoint: &'static str, r: Result<Response, ApiError>) -> Response {
    let resp = r.unwrap_or_else(IntoResponse::into_response);
    st.metrics.request(endpoint, resp.status().as_u16());
    resp
}

async fn health(State(st): State<AppState>) -> Response {
    respond(
        &st,
        "health",
        Ok(Json(json!({"status": "ok"})).into_response()),
    )
}

async fn models(State(st): State<AppState>) -> Response {
    let body = json!({"object": "list", "data": [{
        "id": st.model_id, "object": "model", "created": now_s(), "owned_by": "lmq",
        "max_model_len": st.context,
    }]});
    respond(&st, "models", Ok(Json(body).into_response()))
}

async fn metrics(State(st): State<AppState>) -> Response {
    let text = st.metrics.render(&st.engine.load);
    respond(
        &st,
        "metrics",
        Ok(([("content-type", "text/plain; version=0.0.4")], text).into_response()),
    )
}

async fn not_found(State(st): State<AppState>, uri: axum::http::Uri) -> Response {
    let e = ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found_error",
        format!("no route {}", uri.path()),
    );
    respond(&st, "other", Err(e))
}

fn check_model(st: &ServerState, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if !m.is_empty() && *m != st.model_id => Err(ApiError {
            param: Some("model"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found_error",
                format!(
                    "the model `{m}` does not exist; this server serves `{}`",
                    st.model_id
                ),
            )
        }),
        _ => Ok(()),
    }
}

fn check_context(
    st: &ServerState,
    param: &'static str,
    prompt: usize,
    max_new: usize,
) -> Result<(), ApiError> {
    if prompt == 0 {
        return Err(ApiError::invalid(param, "the prompt is empty"));
    }
    if prompt + max_new > st.context {
        return Err(ApiError::invalid(
            param,
            format!(
                "this model's context is {} tokens, but the request has {prompt} prompt tokens \
                 and max_tokens {max_new} ({} in all)",
                st.context,
                prompt + max_new
            ),
        ));
    }
    Ok(())
}

/// Text of one token for `logprobs` (lossy when it holds part of a character).
fn piece(tok: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(&tok.token_to_piece(id).unwrap_or_default()).into_owned()
}

/// A submitted generation: its event stream and what the handler needs to finish it.
struct Running {
    rx: mpsc::UnboundedReceiver<Event>,
    prompt: Vec<u32>,
    t0: Instant,
}

fn submit(
    st: &ServerState,
    prompt: Vec<u32>,
    gen: &Generation,
    max_new: usize,
    stop_ids: &[u32],
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
) -> Result<Running, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    st.engine
        .submit(EngineRequest {
            prompt: prompt.clone(),
            max_new,
            params: gen.params.clone(),
            stop_ids: stop_ids.to_vec(),
            logprobs,
            prompt_logprobs,
            events: tx,
        })
        .map_err(|b| ApiError::busy(b.to_string()))?;
    Ok(Running {
        rx,
        prompt,
        t0: Instant::now(),
    })
}

/// Token timing of one generation, for the histograms.
#[derive(Default)]
struct Timing {
    first: Option<Instant>,
    last: Option<Instant>,
    tokens: usize,
}

impl Timing {
    fn token(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.tokens += 1;
    }

    fn record(&self, st: &ServerState, t0: Instant, prompt: usize) {
        let ttft = self.first.map(|f| (f - t0).as_secs_f64());
        let tpot = match (self.first, self.last) {
            (Some(f), Some(l)) if self.tokens > 1 => {
                Some((l - f).as_secs_f64() / (self.tokens - 1) as f64)
            }
            _ => None,
        };
        st.metrics.generation(prompt, self.tokens, ttft, tpot);
    }
}

/// A whole (non-streamed) generation.
struct Outcome {
    text: String,
    /// Tokens generated, an end-of-sequence token included.
    generated: usize,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    finish: FinishReason,
}

async fn collect(
    st: &ServerState,
    mut run: Running,
    stops: Vec<String>,
) -> Result<Outcome, ApiError> {
    let mut ts = TextStream::new(&st.tokenizer, stops);
    let mut out = Outcome {
        text: String::new(),
        generated: 0,
        logprobs: vec![],
        prompt_logprobs: None,
        finish: FinishReason::Length,
    };
    let mut timing = Timing::default();
    loop {
        match run.rx.recv().await {
            Some(Event::Prompt(p)) => out.prompt_logprobs = Some(p),
            Some(Event::Token { id, logprob, end }) => {
                timing.token();
                out.generated += 1;
                out.logprobs.extend(logprob);
                if end {
                    continue;
                }
                out.text += &ts.push(id);
                if ts.stopped() {
                    out.finish = FinishReason::Stop;
                    break;
                }
            }
            Some(Event::Finished(r)) => {
                out.text += &ts.finish();
                out.finish = r;
                break;
            }
            Some(Event::Failed(m)) => return Err(ApiError::internal(m)),
            None => return Err(ApiError::internal("the engine stopped")),
        }
    }
    timing.record(st, run.t0, run.prompt.len());
    Ok(out)
}

fn top_map(tok: &Tokenizer, t: &TokenLogprob) -> Value {
    let mut m = serde_json::Map::new();
    for &(id, lp) in &t.top {
        m.entry(piece(tok, id)).or_insert(json!(lp));
    }
    Value::Object(m)
}

/// The legacy completions `logprobs` object over (optionally) the prompt and the output.
fn completion_logprobs(
    tok: &Tokenizer,
    prompt: Option<(&[u32], &[Option<TokenLogprob>])>,
    out: &[TokenLogprob],
    text_start: usize,
) -> Value {
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut offset = 0usize;
    if let Some((ids, plps)) = prompt {
        for (i, &id) in ids.iter().enumerate() {
            let p = piece(tok, id);
            offsets.push(offset);
            offset += p.len();
            tokens.push(p);
            match plps.get(i).and_then(Option::as_ref) {
                Some(t) => {
                    lps.push(json!(t.logprob));
                    tops.push(top_map(tok, t));
                }
                None => {
                    lps.push(Value::Null);
                    tops.push(Value::Null);
                }
            }
        }
    }
    let mut offset = offset.max(text_start);
    for t in out {
        let p = piece(tok, t.id);
        offsets.push(offset);
        offset += p.len();
        tokens.push(p);
        lps.push(json!(t.logprob));
        tops.push(top_map(tok, t));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

fn prompts_of(st: &ServerState, p: Prompt) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |s: &str| {
        st.tokenizer
            .encode(s, true)
            .map_err(|e| ApiError::invalid("prompt", format!("cannot tokenize the prompt: {e}")))
    };
    let lists = match p {
        Prompt::Text(s) => vec![encode(&s)?],
        Prompt::Texts(v) => v.iter().map(|s| encode(s)).collect::<Result<_, _>>()?,
        Prompt::Ids(v) => vec![v],
        Prompt::IdLists(v) => v,
    };
    if lists.is_empty() {
        return Err(ApiError::invalid("prompt", "no prompt given"));
    }
    let vocab = st.tokenizer.vocab_size() as u32;
    if let Some(bad) = lists.iter().flatten().find(|&&id| id >= vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    Ok(lists)
}

async fn completions(
    State(st): State<AppState>,
    body: Result<ApiJson<CompletionRequest>, ApiError>,
) -> Response {
    let r = match body {
        Ok(ApiJson(req)) => completions_inner(st.clone(), req).await,
        Err(e) => Err(e),
    };
    respond(&st, "completions", r)
}

async fn completions_inner(st: AppState, req: CompletionRequest) -> Result<Response, ApiError> {
    check_model(&st, &req.common.model)?;
    let gen = req.common.validate(req.common.max_tokens)?;
    let top = check_top("logprobs", req.logprobs)?;
    if req.best_of.unwrap_or(1) != 1 {
        return Err(ApiError::invalid(
            "best_of",
            "only best_of = 1 is supported",
        ));
    }
    let prompts = prompts_of(&st, req.prompt)?;
    let max_new = gen.max_new.unwrap_or(DEFAULT_COMPLETION_TOKENS);
    for p in &prompts {
        check_context(&st, "prompt", p.len(), max_new)?;
    }
    let prompt_lps = if req.echo { top } else { None };
    let stop_ids = if req.common.ignore_eos {
        vec![]
    } else {
        st.eos_ids.clone()
    };
    let id = request_id("cmpl");
    let created = now_s();
    if req.common.stream {
        if prompts.len() != 1 {
            return Err(ApiError::invalid(
                "prompt",
                "a streamed request takes one prompt",
            ));
        }
        // Echo needs the prompt event even without log-probabilities.
        let echo_lps = if req.echo {
            Some(top.unwrap_or(0))
        } else {
            None
        };
        let run = submit(
            &st,
            prompts[0].clone(),
            &gen,
            max_new,
            &stop_ids,
            top,
            echo_lps,
        )?;
        let usage_too = req.common.stream_options.is_some_and(|o| o.include_usage);
        return Ok(stream(
            st,
            run,
            gen.stops,
            Flavor::Completion {
                echo: req.echo,
                logprobs: top.is_some(),
            },
            id,
            created,
            usage_too,
        ));
    }
    let mut runs = Vec::with_capacity(prompts.len());
    for p in prompts {
        runs.push(submit(&st, p, &gen, max_new, &stop_ids, top, prompt_lps)?);
    }
    let (mut choices, mut n_prompt, mut n_out) = (vec![], 0, 0);
    for (index, run) in runs.into_iter().enumerate() {
        let prompt = run.prompt.clone();
        let out = collect(&st, run, gen.stops.clone()).await?;
        n_prompt += prompt.len();
        n_out += out.generated;
        let prompt_text = if req.echo {
            st.tokenizer.decode(&prompt, false).unwrap_or_default()
        } else {
            String::new()
        };
        let logprobs = match top {
            None => Value::Null,
            Some(_) => {
                let p = out.prompt_logprobs.as_deref().map(|l| (&prompt[..], l));
                completion_logprobs(&st.tokenizer, p, &out.logprobs, prompt_text.len())
            }
        };
        choices.push(json!({"index": index, "text": prompt_text + &out.text,
                            "logprobs": logprobs, "finish_reason": out.finish.as_str()}));
    }
    Ok(Json(
        json!({"id": id, "object": "text_completion", "created": created,
                   "model": st.model_id, "choices": choices, "usage": usage(n_prompt, n_out)}),
    )
    .into_response())
}

fn chat_logprobs(tok: &Tokenizer, out: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let bytes = tok.token_to_piece(id).unwrap_or_default();
        json!({"token": String::from_utf8_lossy(&bytes), "logprob": lp, "bytes": bytes})
    };
    let content: Vec<Value> = out
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(i, l)| entry(i, l)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

async fn chat_completions(
    State(st): State<AppState>,
    body: Result<ApiJson<ChatRequest>, ApiError>,
) -> Response {
    let r = match body {
        Ok(ApiJson(req)) => chat_inner(st.clone(), req).await,
        Err(e) => Err(e),
    };
    respond(&st, "chat_completions", r)
}

async fn chat_inner(st: AppState, req: ChatRequest) -> Result<Response, ApiError> {
    check_model(&st, &req.common.model)?;
    let gen = req
        .common
        .validate(req.max_completion_tokens.or(req.common.max_tokens))?;
    let top = if req.logprobs {
        Some(check_top("top_logprobs", req.top_logprobs)?.unwrap_or(0))
    } else {
        None
    };
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "no messages given"));
    }
    let template = st
        .chat
        .as_ref()
        .ok_or_else(|| ApiError::invalid("messages", "this model has no chat template"))?;
    let text = template
        .render(&req.messages)
        .map_err(|e| ApiError::invalid("messages", format!("chat template: {e}")))?;
    let prompt = st
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::invalid("messages", format!("cannot tokenize: {e}")))?;
    let max_new = gen
        .max_new
        .unwrap_or_else(|| st.context.saturating_sub(prompt.len()));
    check_context(&st, "messages", prompt.len(), max_new)?;
    let id = request_id("chatcmpl");
    let created = now_s();
    let stop_ids = if req.common.ignore_eos {
        vec![]
    } else {
        st.chat_stop_ids.clone()
    };
    let run = submit(&st, prompt, &gen, max_new, &stop_ids, top, None)?;
    if req.common.stream {
        let usage_too = req.common.stream_options.is_some_and(|o| o.include_usage);
        return Ok(stream(
            st,
            run,
            gen.stops,
            Flavor::Chat {
                logprobs: top.is_some(),
            },
            id,
            created,
            usage_too,
        ));
    }
    let n_prompt = run.prompt.len();
    let out = collect(&st, run, gen.stops).await?;
    let logprobs = match top {
        None => Value::Null,
        Some(_) => chat_logprobs(&st.tokenizer, &out.logprobs),
    };
    Ok(Json(
        json!({"id": id, "object": "chat.completion", "created": created,
        "model": st.model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                     "logprobs": logprobs, "finish_reason": out.finish.as_str()}],
        "usage": usage(n_prompt, out.generated)}),
    )
    .into_response())
}

/// Which chunk format a stream speaks.
#[derive(Clone, Copy)]
enum Flavor {
    Completion { echo: bool, logprobs: bool },
    Chat { logprobs: bool },
}

impl Flavor {
    /// OpenAI's `object` of a stream chunk.
    fn object(self) -> &'static str {
        match self {
            Flavor::Completion { .. } => "text_completion",
            Flavor::Chat { .. } => "chat.completion.chunk",
        }
    }
}

/// Streams a generation as server-sent events in OpenAI's chunk format, ending with
/// `[DONE]`. A client that goes away drops the event stream, which drops the engine's
/// channel, which frees the sequence's batch slot at the next step.
fn stream(
    st: AppState,
    mut run: Running,
    stops: Vec<String>,
    flavor: Flavor,
    id: String,
    created: u64,
    usage_too: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let model = st.model_id.clone();
        let chunk = |choice: Value| {
            let body = json!({"id": id, "object": flavor.object(), "created": created, "model": model,
                              "choices": [choice]});
            Ok(SseEvent::default().data(body.to_string()))
        };
        let piece_of = |text: String, lps: &[TokenLogprob], finish: Option<&str>| match flavor {
            Flavor::Completion { logprobs, .. } => json!({"index": 0, "text": text,
                "logprobs": if logprobs && !lps.is_empty() {
                    completion_logprobs(&st.tokenizer, None, lps, 0) } else { Value::Null },
                "finish_reason": finish}),
            Flavor::Chat { logprobs } => json!({"index": 0,
                "delta": if finish.is_some() && text.is_empty() { json!({}) } else { json!({"content": text}) },
                "logprobs": if logprobs && !lps.is_empty() { chat_logprobs(&st.tokenizer, lps) } else { Value::Null },
                "finish_reason": finish}),
        };
        let mut ts = TextStream::new(&st.tokenizer, stops);
        let mut timing = Timing::default();
        let mut generated = 0usize;
        if let Flavor::Chat { .. } = flavor {
            let first = json!({"index": 0, "delta": {"role": "assistant", "content": ""},
                               "logprobs": null, "finish_reason": null});
            if tx.send(chunk(first)).await.is_err() {
                return;
            }
        }
        let finish = loop {
            let ev = run.rx.recv().await;
            let c = match ev {
                Some(Event::Prompt(p)) => {
                    let Flavor::Completion {
                        echo: true,
                        logprobs,
                    } = flavor
                    else {
                        continue;
                    };
                    let text = st.tokenizer.decode(&run.prompt, false).unwrap_or_default();
                    let lps = if logprobs {
                        completion_logprobs(&st.tokenizer, Some((&run.prompt, &p)), &[], 0)
                    } else {
                        Value::Null
                    };
                    json!({"index": 0, "text": text, "logprobs": lps, "finish_reason": null})
                }
                Some(Event::Token { id, logprob, end }) => {
                    timing.token();
                    generated += 1;
                    let lps: Vec<TokenLogprob> = logprob.into_iter().collect();
                    if end {
                        if lps.is_empty() {
                            continue;
                        }
                        piece_of(String::new(), &lps, None)
                    } else {
                        let text = ts.push(id);
                        if ts.stopped() {
                            let _ = tx.send(chunk(piece_of(text, &[], None))).await;
                            break FinishReason::Stop;
                        }
                        if text.is_empty() && lps.is_empty() {
                            continue;
                        }
                        piece_of(text, &lps, None)
                    }
                }
                Some(Event::Finished(r)) => {
                    let rest = ts.finish();
                    if !rest.is_empty() && tx.send(chunk(piece_of(rest, &[], None))).await.is_err()
                    {
                        return;
                    }
                    break r;
                }
                Some(Event::Failed(m)) => {
                    let e = ApiError::internal(m).body();
                    let _ = tx.send(Ok(SseEvent::default().data(e.to_string()))).await;
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                None => return,
            };
            if tx.send(chunk(c)).await.is_err() {
                return; // the client left
            }
        };
        drop(run.rx); // a stop string ended it: free the slot now
        timing.record(&st, run.t0, run.prompt.len());
        let _ = tx
            .send(chunk(piece_of(String::new(), &[], Some(finish.as_str()))))
            .await;
        if usage_too {
            let u = json!({"id": id, "object": flavor.object(), "created": created, "model": model,
                           "choices": [], "usage": usage(run.prompt.len(), generated)});
            let _ = tx.send(Ok(SseEvent::default().data(u.to_string()))).await;
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
