//! wiki2 perplexity of the real SmolLM2 against the transformers reference in
//! `../shared/reference/` (a few windows: the full figures come from `evaluate`).

use lmq_evals::perplexity::{perplexity, PplOptions};
use lmq_evals::text::wiki2_path;
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::Cpu;

/// Per-window NLL sums of a forward pass that matches transformers agree to about 1e-4
/// relative (reference README); we hold ourselves to that.
const WINDOW_NLL_REL_TOL: f64 = 1e-4;

#[test]
fn first_windows_of_512_match_transformers() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/reference/smollm2-135m-f32-wiki2-512x40.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let want: Vec<f64> = reference["results"]["512"]["per_window_nll_sum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();

    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let model = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    let text = std::fs::read_to_string(wiki2_path()).unwrap();
    let ids = ckpt.tokenizer.encode(&text, false).unwrap();
    let opts = PplOptions {
        seqlen: 512,
        max_windows: Some(3),
        through_decode: false,
    };
    let report = perplexity(&model, &ids, &opts, |_, _| {}).unwrap();

    assert_eq!(
        report.tokens,
        reference["n_tokens"].as_u64().unwrap() as usize
    );
    assert_eq!(report.ids_sha256, reference["ids_sha256"].as_str().unwrap());
    assert_eq!(report.predicted_tokens, 3 * 511);
    for (i, (got, want)) in report.per_window_nll.iter().zip(&want).enumerate() {
        let rel = (got - want).abs() / want;
        assert!(
            rel < WINDOW_NLL_REL_TOL,
            "window {i}: {got} vs transformers {want} (rel {rel:.2e})"
        );
    }
}

#[test]
fn scoring_through_the_decode_path_gives_the_same_nll() {
    // One token at a time through the KV cache (fused decode step, GEMV kernels) against one
    // forward pass (GEMM kernels) over the same window.
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let model = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    let text = std::fs::read_to_string(wiki2_path()).unwrap();
    let ids = ckpt.tokenizer.encode(&text[..4000], false).unwrap();
    let run = |through_decode| {
        let opts = PplOptions {
            seqlen: 96,
            max_windows: Some(1),
            through_decode,
        };
        perplexity(&model, &ids, &opts, |_, _| {}).unwrap().nll_sum
    };
    let (pass, decode) = (run(false), run(true));
    let rel = (pass - decode).abs() / pass;
    assert!(
        rel < WINDOW_NLL_REL_TOL,
        "decode path {decode} vs forward pass {pass} (rel {rel:.2e})"
    );
}
