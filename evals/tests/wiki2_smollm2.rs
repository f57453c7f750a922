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
