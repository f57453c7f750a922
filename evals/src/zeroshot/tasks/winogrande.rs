//! Winogrande (`lm_eval/tasks/winogrande/default.yaml` + `preprocess_winogrande.py`), partial
//! scoring: the contexts are the sentence up to the blank with each option substituted
//! (`doc_to_choice`), the one continuation is `" " + sentence[blank + 1:].strip()`
//! (`doc_to_target` after the target delimiter), gold `{"1": 0, "2": 1}[answer]`; `acc` only.

use lmq_calibration::arrow_dataset::Row;

use crate::zeroshot::doc::{Doc, Request};
use crate::zeroshot::fields::{check_gold, str_field};
use crate::zeroshot::registry::{DataSource, TaskDef, TaskKind};
use crate::zeroshot::tasks::TARGET_DELIMITER;

/// The registry entry.
pub const TASK: TaskDef = TaskDef {
    name: "winogrande",
    source: DataSource::Arrow("winogrande/winogrande_xl/validation"),
    kind: TaskKind::MultipleChoice { acc_norm: false },
    build: doc,
};

/// One row → doc.
pub fn doc(row: &Row) -> Result<Doc, String> {
    let sentence = str_field(row, "sentence")?;
    let blank = sentence
        .find('_')
        .ok_or_else(|| format!("field `sentence` has no blank `_`: {sentence:?}"))?;
    let target = sentence[blank + 1..].trim();
    let choices: Vec<String> = [str_field(row, "option1")?, str_field(row, "option2")?]
        .iter()
        .map(|opt| format!("{}{opt}", &sentence[..blank]))
        .collect();
    let gold = match str_field(row, "answer")? {
        "1" => 0,
        "2" => 1,
        other => {
            return Err(format!(
                "field `answer` is {other:?}, expected \"1\" or \"2\""
            ))
        }
    };
    let requests = choices
        .iter()
        .map(|ctx| Request::new(ctx.clone(), format!("{TARGET_DELIMITER}{target}")))
        .collect();
    Ok(Doc {
        requests,
        gold: check_gold(gold, choices.len())?,
        choices,
    })
}
