//! PIQA (`lm_eval/tasks/piqa/piqa.yaml`): `"Question: {{goal}}\nAnswer:"`, choices
//! `[sol1, sol2]`, gold `label`; `acc` and `acc_norm`.

use lmq_calibration::arrow_dataset::Row;

use super::multiple_choice;
use crate::zeroshot::doc::Doc;
use crate::zeroshot::fields::{index_field, str_field};
use crate::zeroshot::registry::{DataSource, TaskDef, TaskKind};

/// The registry entry.
pub const TASK: TaskDef = TaskDef {
    name: "piqa",
    source: DataSource::Arrow("piqa/plain_text/validation"),
    kind: TaskKind::MultipleChoice { acc_norm: true },
    build: doc,
};

/// One row → doc.
pub fn doc(row: &Row) -> Result<Doc, String> {
    let context = format!("Question: {}\nAnswer:", str_field(row, "goal")?);
    let choices = vec![
        str_field(row, "sol1")?.to_string(),
        str_field(row, "sol2")?.to_string(),
    ];
    multiple_choice(context, choices, index_field(row, "label")?)
}
