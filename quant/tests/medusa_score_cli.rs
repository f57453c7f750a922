//! Bad input through the real `medusa-score` binary: heads that are not there, or are for
//! another model's width, end with one error line naming their directory and exit code 1,
//! before any answer is generated.

use std::process::Command;

use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::medusa::{MedusaConfig, MedusaHeads};

/// Runs `medusa-score` on SmolLM2 with `heads` and returns its exit code, its stderr's
/// non-empty lines and whether it printed anything.
fn score_with(heads: &std::path::Path) -> (Option<i32>, Vec<String>, bool) {
    let model = ensure(Asset::SmolLm2).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_medusa-score"))
        .arg("--model")
        .arg(&model)
        .arg("--heads")
        .arg(heads)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    (o.status.code(), lines, !o.stdout.is_empty())
}

#[test]
fn missing_heads_are_named_in_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, lines, printed) = score_with(&tmp.path().join("no-heads-here"));
    assert_eq!(code, Some(1), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "expected one line, got: {lines:?}");
    assert!(lines[0].contains("no-heads-here"), "{}", lines[0]);
    assert!(!printed, "printed a score");
}

#[test]
fn heads_for_another_width_are_named_in_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("narrow-heads");
    MedusaHeads::zeros(MedusaConfig {
        num_heads: 2,
        num_layers: 1,
        hidden_size: 8,
        token_input: false,
        recurrent: false,
    })
    .save(&dir)
    .unwrap();
    let (code, lines, printed) = score_with(&dir);
    assert_eq!(code, Some(1), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "expected one line, got: {lines:?}");
    assert!(
        lines[0].contains("narrow-heads") && lines[0].contains("hidden size 8"),
        "{}",
        lines[0]
    );
    assert!(!printed, "printed a score");
}
