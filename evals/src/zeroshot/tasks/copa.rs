//! COPA (`lm_eval/tasks/super_glue/copa/default.yaml` + `utils.py`): context
//! `premise.strip()[:-1] + " because"` (question `cause`) or `" therefore"` (`effect`),
//! choices `" " + choice[0].lower() + choice[1:]`, and the default target delimiter `" "` in
//! front of each (so continuations start with two spaces, exactly as lm-eval scores them);
//! gold `label`; `acc` only.

use lmq_calibration::arrow_dataset::Row;

use super::multiple_choice;
use crate::zeroshot::doc::Doc;
use crate::zeroshot::fields::{index_field, str_field};
use crate::zeroshot::registry::{DataSource, TaskDef, TaskKind};

/// The registry entry.
pub const TASK: TaskDef = TaskDef {
    name: "copa",
    source: DataSource::Arrow("super_glue/copa/validation"),
    kind: TaskKind::MultipleChoice { acc_norm: false },
    build: doc,
};

/// One row → doc.
pub fn doc(row: &Row) -> Result<Doc, String> {
    let connector = match str_field(row, "question")? {
        "cause" => "because",
        "effect" => "therefore",
        other => {
            return Err(format!(
                "field `question` is {other:?}, expected cause or effect"
            ))
        }
    };
    let premise = str_field(row, "premise")?.trim();
    // Python's `[:-1]` drops the last character (the period).
    let cut = premise.char_indices().last().map_or(0, |(i, _)| i);
    let context = format!("{} {connector}", &premise[..cut]);
    let choices = vec![
        format!(" {}", convert_choice(str_field(row, "choice1")?)),
        format!(" {}", convert_choice(str_field(row, "choice2")?)),
    ];
    multiple_choice(context, choices, index_field(row, "label")?)
}

/// `utils.convert_choice`: the first character lower-cased.
pub fn convert_choice(choice: &str) -> String {
    let mut chars = choice.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
