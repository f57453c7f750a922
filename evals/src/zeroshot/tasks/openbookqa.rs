//! OpenBookQA (`lm_eval/tasks/openbookqa/openbookqa.yaml`): context `question_stem` as is,
//! choices `choices.text`, gold `choices.label.index(answerKey.lstrip())`; `acc` and `acc_norm`.

use lmq_calibration::arrow_dataset::Row;

use super::arc::label_index;
use super::multiple_choice;
use crate::zeroshot::doc::Doc;
use crate::zeroshot::fields::{str_field, str_list, struct_field};
use crate::zeroshot::registry::{DataSource, TaskDef, TaskKind};

/// The registry entry.
pub const TASK: TaskDef = TaskDef {
    name: "openbookqa",
    source: DataSource::Arrow("openbookqa/main/validation"),
    kind: TaskKind::MultipleChoice { acc_norm: true },
    build: doc,
};

/// One row → doc.
pub fn doc(row: &Row) -> Result<Doc, String> {
    let context = str_field(row, "question_stem")?.to_string();
    let choices = struct_field(row, "choices")?;
    let texts = str_list(choices, "text")?;
    let gold = label_index(choices, str_field(row, "answerKey")?.trim_start())?;
    multiple_choice(context, texts, gold)
}
