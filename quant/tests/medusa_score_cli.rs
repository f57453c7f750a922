//! Bad input through the real `medusa-score` binary: heads that are not there end with one
//! error line naming their directory and exit code 1, before any answer is generated.

use std::process::Command;

use lmq_runtime::assets::{ensure, Asset};

#[test]
fn missing_heads_are_named_in_one_error_line() {
    let model = ensure(Asset::SmolLm2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let heads = tmp.path().join("no-heads-here");
    let o = Command::new(env!("CARGO_BIN_EXE_medusa-score"))
        .arg("--model")
        .arg(&model)
        .arg("--heads")
        .arg(&heads)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].contains("no-heads-here"), "{}", lines[0]);
    assert!(o.stdout.is_empty(), "printed a score: {:?}", o.stdout);
}
