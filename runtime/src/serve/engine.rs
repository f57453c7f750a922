//! The scheduler: one thread owns the model and runs continuous batching. Between two decode
//! steps it drops sequences whose client left, admits queued requests (prefill, one prompt at
//! a time) up to `max_batch`, then advances every running sequence by one token in a single
//! batched pass. HTTP handlers talk to it through channels only.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::logprobs::{token_logprob, TokenLogprob};
use crate::generate::{host_f32, token_row};
use crate::model::{KvCache, LinearBackend, Llama};
use crate::sampling::{Sampler, SamplingParams};
use crate::speculative::decode::verify_step;
use crate::speculative::Proposer;

/// Room a new sequence's cache starts with beyond its prompt; it grows by doubling.
const INITIAL_NEW_POSITIONS: usize = 256;

/// One generation to run.
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    pub max_new: usize,
    pub params: SamplingParams,
    /// Tokens that end the generation (not reported as output).
    pub stop_ids: Vec<u32>,
    /// Report each generated token's log-probability with this many alternatives.
    pub logprobs: Option<usize>,
    /// Report the prompt tokens' log-probabilities (`echo` with `logprobs`).
    pub prompt_logprobs: Option<usize>,
    pub events: mpsc::UnboundedSender<Event>,
}

/// What the engine tells a request's handler, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// Prompt log-probabilities (position 0 has none), sent first when asked for.
    Prompt(Vec<Option<TokenLogprob>>),
    /// A generated token. `end`: an end-of-sequence token, reported (with its
    /// log-probability, as OpenAI and vLLM do; lm-eval's echo scoring drops the last reported
    /// token) but not text; `Finished` follows.
    Token {
        id: u32,
        logprob: Option<TokenLogprob>,
        end: bool,
    },
    Finished(FinishReason),
    Failed(String),
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// An end-of-sequence token (or, decided by the handler, a stop string).
    Stop,
}

impl FinishReason {
    /// OpenAI's `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Stop => "stop",
        }
    }
}

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests allowed to wait beyond the running batch; more are refused.
    pub max_queue: usize,
    /// Test hook: a prompt containing this token sequence panics inside the engine, to show
    /// that one request's panic fails that request only.
    pub panic_on: Option<Vec<u32>>,
    /// Tokens a proposer may guess per step. Speculation runs only while a single sequence
    /// is running: with several, batching already keeps the cores busy and verifying
    /// guesses for every sequence would cost more than it saves.
    pub speculative_k: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_queue: 256,
            panic_on: None,
            speculative_k: 4,
        }
    }
}

/// Requests waiting and sequences running, read by the handlers (admission, metrics).
#[derive(Debug, Default)]
pub struct Load {
    pub queued: AtomicUsize,
    pub running: AtomicUsize,
    /// Speculative tokens proposed and accepted so far.
    pub proposed: AtomicUsize,
    pub accepted: AtomicUsize,
}

/// The queue is full: the caller should answer "busy, retry later".
#[derive(Debug, thiserror::Error)]
#[error("server busy: {0} requests queued or running")]
pub struct Busy(pub usize);

/// The handlers' side of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<EngineRequest>,
    pub load: Arc<Load>,
    limit: usize,
}

impl EngineHandle {
    /// Starts the engine thread (speculating with `proposer` when given); it stops when
    /// every handle is dropped and the running sequences have finished.
    pub fn spawn<B: LinearBackend>(
        model: Llama<B>,
        opts: EngineOptions,
        proposer: Option<Box<dyn Proposer + Send>>,
    ) -> Self
    where
        Llama<B>: Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let load = Arc::new(Load::default());
        let limit = opts.max_batch + opts.max_queue;
        let l = load.clone();
        std::thread::Builder::new()
            .name("lmq-engine".into())
            .spawn(move || run(model, rx, l, opts, proposer))
            .expect("spawning the engine thread");
        Self { tx, load, limit }
    }

    /// Queues a request, or refuses it when the queue is full.
    pub fn submit(&self, req: EngineRequest) -> Result<(), Busy> {
        let queued = self.load.queued.fetch_add(1, Ordering::SeqCst);
        let total = queued + self.load.running.load(Ordering::SeqCst);
        if total >= self.limit {
            self.load.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Busy(total));
        }
        if self.tx.send(req).is_err() {
            self.load.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Busy(total));
        }
        Ok(())
    }
}

/// A running sequence.
struct Seq {
    /// Prompt and generated tokens (what a proposer continues).
    tokens: Vec<u32>,
    cache: KvCache,
    sampler: Sampler,
    last: u32,
    generated: usize,
    max_new: usize,
    stop_ids: Vec<u32>,
    logprobs: Option<usize>,
    events: mpsc::UnboundedSender<Event>,
    done: bool,
}

impl Seq {
    /// Chooses the next token from `logits` and tells the client.
    fn advance(&mut self, logits: &[f32]) {
        let tok = self.sampler.sample(logits);
        self.emit(tok, logits);
    }

    /// Reports `tok` (chosen from `logits`), ending the sequence at a stop token or the
    /// length limit.
    fn emit(&mut self, tok: u32, logits: &[f32]) {
        let logprob = self.logprobs.map(|n| token_logprob(logits, tok, n));
        let end = self.stop_ids.contains(&tok);
        let _ = self.events.send(Event::Token {
            id: tok,
            logprob,
            end,
        });
        if end {
            self.finish(FinishReason::Stop);
            return;
        }
        self.generated += 1;
        self.last = tok;
        self.tokens.push(tok);
        if self.generated >= self.max_new {
            self.finish(FinishReason::Length);
        }
    }

    fn finish(&mut self, why: FinishReason) {
        let _ = self.events.send(Event::Finished(why));
        self.done = true;
    }
}

fn run<B: LinearBackend>(
    model: Llama<B>,
    mut rx: mpsc::UnboundedReceiver<EngineRequest>,
    load: Arc<Load>,
    opts: EngineOptions,
    mut proposer: Option<Box<dyn Proposer + Send>>,
) {
    let mut pending: VecDeque<EngineRequest> = VecDeque::new();
    let mut running: Vec<Seq> = Vec::new();
    loop {
        if running.is_empty() && pending.is_empty() {
            match rx.blocking_recv() {
                Some(r) => pending.push_back(r),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.push_back(r);
        }
        while running.len() < opts.max_batch {
            let Some(req) = pending.pop_front() else {
                break;
            };
            // Counted as running from here (its first token may reach the client before the
            // batch is updated), so admission always sees it in one of the two counts.
            load.running.fetch_add(1, Ordering::SeqCst);
            load.queued.fetch_sub(1, Ordering::SeqCst);
            if req.events.is_closed() {
                load.running.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let events = req.events.clone();
            match catch_unwind(AssertUnwindSafe(|| prefill(&model, req, &opts))) {
                Ok(Some(seq)) => running.push(seq),
                Ok(None) => {}
                Err(p) => {
                    let _ = events.send(Event::Failed(panic_text(&p)));
                }
            }
            load.running.store(running.len(), Ordering::SeqCst);
        }
        running.retain(|s| !s.done && !s.events.is_closed());
        load.running.store(running.len(), Ordering::SeqCst);
        if running.is_empty() {
            continue;
        }
        let step = catch_unwind(AssertUnwindSafe(|| {
            match (&mut proposer, &mut running[..]) {
                (Some(p), [one]) => {
                    let (proposed, accepted) =
                        speculative_step(&model, one, p.as_mut(), opts.speculative_k);
                    load.proposed.fetch_add(proposed, Ordering::Relaxed);
                    load.accepted.fetch_add(accepted, Ordering::Relaxed);
                }
                _ => decode_step(&model, &mut running),
            }
        }));
        if let Err(p) = step {
            // The caches may be half-updated: fail every sequence of this step.
            let msg = panic_text(&p);
            for s in running.drain(..) {
                let _ = s.events.send(Event::Failed(msg.clone()));
            }
        }
        running.retain(|s| !s.done);
        load.running.store(running.len(), Ordering::SeqCst);
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in the engine: {what}")
}

/// Runs the prompt, reports prompt log-probabilities when asked, and picks the first token.
/// `None` when nothing is left to generate.
fn prefill<B: LinearBackend>(
    model: &Llama<B>,
    req: EngineRequest,
    opts: &EngineOptions,
) -> Option<Seq> {
    if let Some(bad) = &opts.panic_on {
        if !bad.is_empty() && req.prompt.windows(bad.len()).any(|w| w == bad) {
            panic!("injected panic (test hook)");
        }
    }
    let t = req.prompt.len();
    assert!(t > 0, "empty prompt");
    let mut cache = model.new_growable_cache(
        t + req.max_new.clamp(1, INITIAL_NEW_POSITIONS),
        t + req.max_new.max(1),
    );
    let input = token_row(&req.prompt, &model.device());
    let hidden = model.forward_hidden(input, Some(&mut cache));
    let vocab = model.config.vocab_size;
    let last: Vec<f32> = if let Some(n) = req.prompt_logprobs {
        let all = host_f32(model.logits(hidden));
        let mut lps = vec![None];
        for i in 1..t {
            lps.push(Some(token_logprob(
                &all[(i - 1) * vocab..][..vocab],
                req.prompt[i],
                n,
            )));
        }
        let _ = req.events.send(Event::Prompt(lps));
        all[(t - 1) * vocab..].to_vec()
    } else {
        let d = model.config.hidden_size;
        host_f32(model.logits(hidden.slice([0..1, t - 1..t, 0..d])))
    };
    let mut seq = Seq {
        tokens: req.prompt,
        cache,
        sampler: Sampler::new(req.params),
        last: 0,
        generated: 0,
        max_new: req.max_new,
        stop_ids: req.stop_ids,
        logprobs: req.logprobs,
        events: req.events,
        done: false,
    };
    if seq.max_new == 0 {
        seq.finish(FinishReason::Length);
        return None;
    }
    seq.advance(&last);
    (!seq.done).then_some(seq)
}

/// One target pass over the sequence's last token and a proposer's guesses; emits the
/// accepted guesses and the target's own next token. Returns (proposed, accepted).
fn speculative_step<B: LinearBackend>(
    model: &Llama<B>,
    s: &mut Seq,
    proposer: &mut dyn Proposer,
    k: usize,
) -> (usize, usize) {
    let room = s.max_new - s.generated - 1;
    let params = s.sampler.params().clone();
    let proposal = proposer.propose(&s.tokens, k.min(room), &params);
    let v = verify_step(
        model,
        &mut s.cache,
        s.last,
        proposal,
        &params,
        s.sampler.rng(),
    );
    let vocab = model.config.vocab_size;
    for (&tok, row) in v.tokens.iter().zip(v.logits.chunks_exact(vocab)) {
        s.emit(tok, row);
        if s.done {
            break;
        }
    }
    proposer.observe_hidden(s.tokens.len(), &v.hidden);
    (v.proposed, v.tokens.len() - 1)
}

/// One token for every running sequence in one batched forward pass.
fn decode_step<B: LinearBackend>(model: &Llama<B>, running: &mut [Seq]) {
    let tokens: Vec<u32> = running.iter().map(|s| s.last).collect();
    let mut caches: Vec<&mut KvCache> = running.iter_mut().map(|s| &mut s.cache).collect();
    let hidden = model.forward_decode_batch(&tokens, &mut caches);
    let logits = host_f32(model.logits(hidden));
    let vocab = model.config.vocab_size;
    for (s, row) in running.iter_mut().zip(logits.chunks_exact(vocab)) {
        s.advance(row);
    }
}
