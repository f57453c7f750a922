//! Zero-shot tasks scored the way lm-evaluation-harness scores them: each question becomes
//! (context, continuation) requests, each request gets the log-likelihood of its continuation,
//! and `acc`/`acc_norm` (or LAMBADA's greedy-match accuracy and perplexity) are averaged with
//! lm-eval's standard errors.
//!
//! - [`doc`]: one question as lm-eval's `construct_requests` builds it.
//! - [`tasks`]: one file per task (prompt format, choices, gold) and the [`registry`].
//! - [`encode`]: lm-eval's context/continuation tokenization.
//! - [`scorer`]: log-likelihoods from the model, with the context's forward pass shared across
//!   a question's continuations (or, for comparison, every request scored on its own).
//! - [`metrics`]: per-question results into task figures with standard errors.
//! - [`run`]: loading a task's data and running it end to end.

pub mod doc;
pub mod encode;
pub mod error;
pub mod fields;
pub mod metrics;
pub mod registry;
pub mod run;
pub mod scorer;
pub mod tasks;

pub use doc::{Doc, Request};
pub use error::ZeroShotError;
pub use metrics::{MetricValue, Sample, TaskResult};
pub use registry::{lookup, TaskDef, TaskKind, TASKS};
pub use run::{load_docs, run_task, RunOptions};
pub use scorer::{Scored, Scorer, Sharing};
