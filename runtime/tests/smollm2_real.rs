//! The real SmolLM2-135M checkpoint (GGUF Q4_1, dequantized to f32) against transformers'
//! figures on the same weights (`evals/reference/`, produced by `hf_reference.py`).

use std::path::Path;

use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::generate::generate;
use lmq_runtime::sampling::SamplingParams;
use lmq_runtime::Cpu;

fn reference(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../evals/reference")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_continuation_equals_transformers() {
    let path = ensure(Asset::SmolLm2).expect("SmolLM2 asset");
    let ckpt = Checkpoint::open_gguf(&path).unwrap();
    let model = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    let reference = reference("smollm2-greedy-capital.json");

    let prompt = ckpt
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    assert_eq!(prompt, ids(&reference["prompt_ids"]));

    // transformers generated 32 tokens without stopping at EOS: so do we.
    let want = ids(&reference["greedy_no_eos_stop"]["generated_ids"]);
    let got = generate(
        &model,
        &prompt,
        want.len(),
        SamplingParams::default(),
        &[],
        |_| {},
    )
    .unwrap();
    assert_eq!(got, want);
    let text = ckpt.tokenizer.decode(&got, true).unwrap();
    assert!(text.starts_with(" Paris."), "{text:?}");

    // With EOS as a stop token, generation ends where transformers' generate() ended.
    let stop = ckpt.config.eos_token_ids.clone();
    let got = generate(
        &model,
        &prompt,
        32,
        SamplingParams::default(),
        &stop,
        |_| {},
    )
    .unwrap();
    assert_eq!(got, ids(&reference["generate"]["generated_ids"]));
}

/// Distillation answers decoded 4 at a time are the one-at-a-time greedy answers on the real
/// model's shapes (full kernel tiles, a 49k-token head).
#[test]
fn batched_greedy_answers_equal_one_at_a_time() {
    use lmq_runtime::generate_batch::generate_greedy_batch;
    let path = ensure(Asset::SmolLm2).expect("SmolLM2 asset");
    let ckpt = Checkpoint::open_gguf(&path).unwrap();
    let model = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "def add(a, b):",
        "Once upon a time",
        "Water boils at",
        "The three primary colors are",
        "List the days of the week:",
    ]
    .iter()
    .map(|p| ckpt.tokenizer.encode(p, true).unwrap())
    .collect();
    let stop = &ckpt.config.eos_token_ids;
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| generate(&model, p, 12, SamplingParams::default(), stop, |_| {}).unwrap())
        .collect();
    let batched = generate_greedy_batch(&model, &prompts, 12, stop, 4, |_| {}).unwrap();
    assert_eq!(batched, alone);
}
