//! SciQ (`lm_eval/tasks/sciq/sciq.yaml`): `"{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:"`
//! (an empty support leaves the leading newline), choices
//! `[distractor1, distractor2, distractor3, correct_answer]`, gold 3; `acc` and `acc_norm`.

use lmq_calibration::arrow_dataset::Row;

use super::multiple_choice;
use crate::zeroshot::doc::Doc;
use crate::zeroshot::fields::str_field;
use crate::zeroshot::registry::{DataSource, TaskDef, TaskKind};

/// The registry entry.
pub const TASK: TaskDef = TaskDef {
    name: "sciq",
    source: DataSource::Arrow("sciq/none/validation"),
    kind: TaskKind::MultipleChoice { acc_norm: true },
    build: doc,
};

/// One row → doc.
pub fn doc(row: &Row) -> Result<Doc, String> {
    let context = format!(
        "{}\nQuestion: {}\nAnswer:",
        str_field(row, "support")?.trim_start(),
        str_field(row, "question")?
    );
    let choices = [
        "distractor1",
        "distractor2",
        "distractor3",
        "correct_answer",
    ]
    .iter()
    .map(|f| str_field(row, f).map(str::to_string))
    .collect::<Result<Vec<_>, _>>()?;
    multiple_choice(context, choices, 3)
}
