//! GGUF → HF directory → runtime: the converted checkpoint must compute exactly what the
//! GGUF computes (f32), and the directory must carry what transformers needs.

use lmq_quant::convert::{convert, ConvertOptions};
use lmq_quant::recipe::FloatDtype;
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::Cpu;

fn logits(ckpt: &Checkpoint, ids: &[u32]) -> Vec<f32> {
    let model = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    model.logits_of(ids)
}

#[test]
fn converted_f32_directory_computes_the_same_logits() {
    let gguf = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2-f32");
    let opts = ConvertOptions {
        dtype: FloatDtype::F32,
        force: false,
        recipe: Some("output: {dtype: f32}\n".into()),
    };
    convert(&gguf, &out, &opts, |_| {}).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "lmq_recipe.yaml",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let dir = Checkpoint::open_dir(&out).unwrap();
    assert_eq!(dir.config, gguf.config);
    assert!(dir
        .chat_template
        .as_deref()
        .unwrap_or("")
        .contains("<|im_start|>"));
    let text = "The capital of France is";
    let ids = gguf.tokenizer.encode(text, true).unwrap();
    assert_eq!(dir.tokenizer.encode(text, true).unwrap(), ids);
    assert_eq!(logits(&dir, &ids), logits(&gguf, &ids));
}
