//! ARC-Easy and ARC-Challenge (`lm_eval/tasks/arc/arc_easy.yaml`, `arc_challenge.yaml`):
//! `"Question: {{question}}\nAnswer:"`, choices `choices.text`, gold
//! `choices.label.index(answerKey)`; `acc` and `acc_norm`.

use lmq_calibration::arrow_dataset::Row;

use super::multiple_choice;
use crate::zeroshot::doc::Doc;
use crate::zeroshot::fields::{str_field, str_list, struct_field};
use crate::zeroshot::registry::{DataSource, TaskDef, TaskKind};

/// `arc_easy`.
pub const EASY: TaskDef = TaskDef {
    name: "arc_easy",
    source: DataSource::Arrow("ai2_arc/ARC-Easy/validation"),
    kind: TaskKind::MultipleChoice { acc_norm: true },
    build: doc,
};

/// `arc_challenge` (same format, other split).
pub const CHALLENGE: TaskDef = TaskDef {
    name: "arc_challenge",
    source: DataSource::Arrow("ai2_arc/ARC-Challenge/validation"),
    kind: TaskKind::MultipleChoice { acc_norm: true },
    build: doc,
};

/// One row → doc.
pub fn doc(row: &Row) -> Result<Doc, String> {
    let context = format!("Question: {}\nAnswer:", str_field(row, "question")?);
    let choices = struct_field(row, "choices")?;
    let texts = str_list(choices, "text")?;
    let gold = label_index(choices, str_field(row, "answerKey")?)?;
    multiple_choice(context, texts, gold)
}

/// `choices.label.index(key)` (shared with OpenBookQA).
pub fn label_index(choices: &Row, key: &str) -> Result<usize, String> {
    let labels = str_list(choices, "label")?;
    labels
        .iter()
        .position(|l| l == key)
        .ok_or_else(|| format!("answerKey {key:?} not among choices.label {labels:?}"))
}
