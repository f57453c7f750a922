//! One file per task, each a transcription of the task's YAML (and `utils.py`) in
//! lm-evaluation-harness `lm_eval/tasks/` (commit 4e7e0d47, 2026-08-21), 0-shot, no chat
//! template. The shared piece is [`multiple_choice`]: lm-eval's default target delimiter `" "`
//! between context and each choice.

pub mod arc;
pub mod boolq;
pub mod copa;
pub mod hellaswag;
pub mod lambada;
pub mod openbookqa;
pub mod piqa;
pub mod sciq;
pub mod winogrande;

use super::doc::{Doc, Request};
use super::fields::check_gold;

/// lm-eval's `target_delimiter` default.
pub const TARGET_DELIMITER: &str = " ";

/// A `multiple_choice` doc with one context and one request per choice:
/// `(ctx, " " + choice)`, as `ConfigurableTask.construct_requests` builds them.
pub fn multiple_choice(context: String, choices: Vec<String>, gold: usize) -> Result<Doc, String> {
    let gold = check_gold(gold, choices.len())?;
    let requests = choices
        .iter()
        .map(|c| Request::new(context.clone(), format!("{TARGET_DELIMITER}{c}")))
        .collect();
    Ok(Doc {
        requests,
        choices,
        gold,
    })
}
