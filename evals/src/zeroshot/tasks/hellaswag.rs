//! HellaSwag (`lm_eval/tasks/hellaswag/hellaswag.yaml` + `utils.py`): query
//! `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`, choices
//! `preprocess(ending)`, gold `int(label)`; `acc` and `acc_norm`.

use lmq_calibration::arrow_dataset::Row;

use super::multiple_choice;
use crate::zeroshot::doc::Doc;
use crate::zeroshot::fields::{index_field, str_field, str_list};
use crate::zeroshot::registry::{DataSource, TaskDef, TaskKind};

/// The registry entry.
pub const TASK: TaskDef = TaskDef {
    name: "hellaswag",
    source: DataSource::Arrow("hellaswag/none/validation"),
    kind: TaskKind::MultipleChoice { acc_norm: true },
    build: doc,
};

/// One row → doc.
pub fn doc(row: &Row) -> Result<Doc, String> {
    let ctx = format!(
        "{} {}",
        str_field(row, "ctx_a")?,
        capitalize(str_field(row, "ctx_b")?)
    );
    let query = preprocess(&format!("{}: {ctx}", str_field(row, "activity_label")?));
    let choices = str_list(row, "endings")?
        .iter()
        .map(|e| preprocess(e))
        .collect();
    multiple_choice(query, choices, index_field(row, "label")?)
}

/// `utils.preprocess`: strip, `" [title]"` → `". "`, drop every `\[.*?\]` (WikiHow
/// artefacts), `"  "` → `" "` (one left-to-right pass, like Python's `str.replace`).
pub fn preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    remove_bracketed(&text).replace("  ", " ")
}

/// `re.sub("\\[.*?\\]", "", text)`: a `[` up to the nearest `]` on the same line (`.` does
/// not match a newline); a `[` without one is kept.
fn remove_bracketed(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let line_end = after.find('\n').unwrap_or(after.len());
        match after[..line_end].find(']') {
            Some(close) => rest = &after[close + 1..],
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Python's `str.capitalize()`: first character upper case, the rest lower case.
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}
