//! Bad input through the real `evaluate` binary: each case must end with a one-line error
//! that names the file and the problem, a non-zero exit code, and no panic.

use std::path::Path;
use std::process::Command;

use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::config::Arch;
use lmq_runtime::weights::tiny_config;

fn evaluate(model: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--ppl",
            "wiki2",
            "--max-windows",
            "1",
            "--seqlen",
            "16",
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_clean_error(code: i32, stderr: &str, must_contain: &[&str]) {
    assert_ne!(code, 0, "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    for s in must_contain {
        assert!(lines[0].contains(s), "{s:?} missing from {:?}", lines[0]);
    }
}

fn prefix_of_smollm2(dir: &Path, name: &str, len: usize) -> std::path::PathBuf {
    let bytes = std::fs::read(ensure(Asset::SmolLm2).unwrap()).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &bytes[..len]).unwrap();
    path
}

#[test]
fn truncated_gguf_header() {
    let tmp = tempfile::tempdir().unwrap();
    let path = prefix_of_smollm2(tmp.path(), "cut.gguf", 5000);
    let (code, err) = evaluate(&path);
    assert_clean_error(code, &err, &["cut.gguf"]);
}

#[test]
fn gguf_tensor_data_past_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    // Metadata and tensor infos intact, tensor data cut: offsets point past the end.
    let path = prefix_of_smollm2(tmp.path(), "short.gguf", 20_000_000);
    let (code, err) = evaluate(&path);
    assert_clean_error(code, &err, &["short.gguf", "past the end"]);
}

fn write_config(dir: &Path, drop_field: Option<&str>) {
    let mut cfg = tiny_config(Arch::Llama).to_hf_json();
    if let Some(f) = drop_field {
        cfg.as_object_mut().unwrap().remove(f);
    }
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

#[test]
fn safetensors_header_longer_than_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_config(tmp.path(), None);
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    std::fs::write(tmp.path().join("model.safetensors"), bytes).unwrap();
    let (code, err) = evaluate(tmp.path());
    assert_clean_error(code, &err, &["model.safetensors", "header length"]);
}

#[test]
fn config_missing_a_field() {
    let tmp = tempfile::tempdir().unwrap();
    write_config(tmp.path(), Some("hidden_size"));
    let (code, err) = evaluate(tmp.path());
    assert_clean_error(code, &err, &["config.json", "hidden_size"]);
}

#[test]
fn missing_model_path() {
    let (code, err) = evaluate(Path::new("/nonexistent/model.gguf"));
    assert_clean_error(code, &err, &["/nonexistent/model.gguf", "no such file"]);
}

#[test]
fn lm_eval_style_window_longer_than_the_context() {
    let model = ensure(Asset::SmolLm2).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args(["--model", model.to_str().unwrap(), "--ppl", "wiki2"])
        .args([
            "--ppl-style",
            "lm-eval",
            "--seqlen",
            "100000",
            "--limit",
            "1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_clean_error(
        out.status.code().unwrap_or(-1),
        &stderr,
        &["--seqlen 100000", "model context 8192"],
    );
}
