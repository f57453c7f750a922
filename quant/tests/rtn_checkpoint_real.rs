//! `quantize --recipe recipes/rtn-w4g64.yaml` on the real SmolLM2: the packed checkpoint the
//! runtime executes computes what the same RTN weights dequantized to f32 compute, and an
//! unsupported pass fails before anything is written.

use std::path::Path;

use lmq_quant::convert::ConvertOptions;
use lmq_quant::packed_checkpoint::quantize_rtn;
use lmq_quant::recipe::{FloatDtype, Recipe};
use lmq_quant::rtn;
use lmq_quant::scheme::{QuantScheme, WeightMatrix};
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::kernels::dense_f32::GEMV_MAX_ROWS;
use lmq_runtime::kernels::packed_vnni::VNNI_MAX_ROWS;
use lmq_runtime::model::Llama;
use lmq_runtime::weights::MemorySource;
use lmq_runtime::Cpu;

/// Packed and dense kernels sum in different orders; logits agree to f32 rounding.
const PACKED_LOGITS_REL_TOL: f32 = 1e-4;

/// The same through the integer kernels (the decode-sized GEMVs, and prompts' int16 GEMM
/// on AVX-512 VNNI), which quantize their inputs to int16 per block.
const PACKED_GEMV_LOGITS_REL_TOL: f32 = 1e-3;

/// The tolerance for a prompt past `VNNI_MAX_ROWS` tokens: the dequantize + f32 GEMM path
/// sums floats, the int16 GEMM (where the CPU runs it) codes its inputs like the GEMVs.
fn long_prompt_tol() -> f32 {
    if lmq_runtime::kernels::packed_gemm_i16::enabled() {
        PACKED_GEMV_LOGITS_REL_TOL
    } else {
        PACKED_LOGITS_REL_TOL
    }
}

fn recipe(name: &str) -> Recipe {
    Recipe::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../recipes")
            .join(name),
    )
    .unwrap()
}

fn logits(model: &Llama<Cpu>, ids: &[u32]) -> Vec<f32> {
    model.logits_of(ids)
}

#[test]
fn rtn_w4g64_packed_checkpoint_equals_its_dequantized_weights() {
    let gguf = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rtn");
    let r = recipe("rtn-w4g64.yaml");
    let opts = ConvertOptions {
        dtype: FloatDtype::F32,
        force: false,
        recipe: Some(r.text.clone()),
    };
    let summary = quantize_rtn(&gguf, &r, &out, &opts, |_| {}).unwrap();
    assert_eq!(summary.quantized_tensors, 210);

    // The same RTN, dequantized, as plain f32 weights.
    let mut dequant = MemorySource::default();
    let scheme = QuantScheme {
        bits: 4,
        group_size: Some(64),
        symmetric: true,
    };
    for name in gguf.weights.names() {
        let shape = gguf.weights.shape(&name).unwrap();
        let data = gguf.weights.load_f32(&name).unwrap();
        let data = if name.ends_with("_proj.weight") {
            let q = rtn::quantize(
                &WeightMatrix::new(&name, &data, shape[0], shape[1]).unwrap(),
                &scheme,
            )
            .unwrap();
            rtn::dequantize(&q).unwrap()
        } else {
            data
        };
        dequant.insert(&name, shape, data);
    }
    let device = Default::default();
    let reference =
        Llama::<Cpu>::load(&gguf.config, &dequant, Path::new("<dequantized>"), &device).unwrap();
    let packed_ckpt = Checkpoint::open_dir(&out).unwrap();
    let packed = packed_ckpt.load_model::<Cpu>(&device).unwrap();

    // Past VNNI_MAX_ROWS tokens, so the packed linears take the prompt path: the int16 GEMM
    // with AVX-512 VNNI, else dequantize + f32 GEMM (shorter prompts take the
    // int16-activation GEMV, checked in the test below).
    let ids = gguf
        .tokenizer
        .encode(
            &"The capital of France is Paris. The capital of Italy is Rome. ".repeat(3),
            false,
        )
        .unwrap();
    assert!(ids.len() > VNNI_MAX_ROWS, "{} tokens", ids.len());
    let want = logits(&reference, &ids);
    let got = logits(&packed, &ids);
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        err <= long_prompt_tol() * scale,
        "max diff {err} (scale {scale})"
    );
    // And it is a real quantization: not the float model.
    let float = gguf.load_model::<Cpu>(&device).unwrap();
    let ferr = logits(&float, &ids)
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        ferr > 100.0 * err,
        "quantized logits too close to float ({ferr} vs {err})"
    );
}

#[test]
fn tied_head_recipe_packs_the_embedding_and_runs_it() {
    let gguf = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    assert!(gguf.config.tie_word_embeddings);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("head8");
    let r = recipe("rtn-w4g64-head8.yaml");
    let opts = ConvertOptions {
        dtype: FloatDtype::F32,
        force: false,
        recipe: Some(r.text.clone()),
    };
    let summary = quantize_rtn(&gguf, &r, &out, &opts, |_| {}).unwrap();
    assert_eq!(
        summary.quantized_tensors, 211,
        "210 layer linears + the tied head"
    );
    let mut dequant = MemorySource::default();
    for name in gguf.weights.names() {
        let shape = gguf.weights.shape(&name).unwrap();
        let data = gguf.weights.load_f32(&name).unwrap();
        let scheme = if name.ends_with("_proj.weight") {
            Some((4, 64))
        } else if name == "model.embed_tokens.weight" {
            Some((8, 32))
        } else {
            None
        };
        let data = match scheme {
            Some((bits, group)) => {
                let s = QuantScheme {
                    bits,
                    group_size: Some(group),
                    symmetric: true,
                };
                let m = WeightMatrix::new(&name, &data, shape[0], shape[1]).unwrap();
                rtn::dequantize(&rtn::quantize(&m, &s).unwrap()).unwrap()
            }
            None => data,
        };
        dequant.insert(&name, shape, data);
    }
    let device = Default::default();
    let reference =
        Llama::<Cpu>::load(&gguf.config, &dequant, Path::new("<dequantized>"), &device).unwrap();
    let packed = Checkpoint::open_dir(&out)
        .unwrap()
        .load_model::<Cpu>(&device)
        .unwrap();
    let short = gguf
        .tokenizer
        .encode("The capital of France is Paris.", false)
        .unwrap();
    assert!(short.len() <= GEMV_MAX_ROWS, "{} tokens", short.len());
    // Over VNNI_MAX_ROWS tokens the packed linears run the int16 GEMM (AVX-512 VNNI) or
    // dequantize and run the f32 GEMM (the same model to float rounding). Up to
    // GEMV_MAX_ROWS (up to VNNI_MAX_ROWS with AVX-512 VNNI) they run the int16-activation
    // GEMV. The int16 codes' rounding (bounded in kernels/packed_i16.rs) reaches ~6e-4 of the
    // largest logit here: the final hidden state's outlier channels set coarse block scales
    // for the head.
    let long: Vec<u32> = short
        .iter()
        .cycle()
        .take(VNNI_MAX_ROWS + short.len())
        .copied()
        .collect();
    for (ids, tol) in [
        (&long, long_prompt_tol()),
        (&short, PACKED_GEMV_LOGITS_REL_TOL),
    ] {
        let (want, got) = (logits(&reference, ids), logits(&packed, ids));
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= tol * scale,
            "{} tokens: max diff {err} (scale {scale})",
            ids.len()
        );
    }
}

#[test]
fn gptq_on_a_tied_head_is_refused() {
    let gguf = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let r = Recipe::parse(
        "calibration: {source: hellaswag, num_samples: 4, seqlen: 64}\nstages:\n  - passes:\n      - gptq: {scheme: W4A16, targets: [lm_head]}\n",
        Path::new("tied-gptq.yaml"),
    )
    .unwrap();
    let Err(err) = lmq_quant::plan::QuantPlan::from_recipe(&r, &*gguf.weights, true) else {
        panic!("a gptq pass on the tied head must be refused");
    };
    let err = err.to_string();
    assert!(err.contains("only an rtn"), "{err}");
}

#[test]
fn gptq_recipe_is_refused_before_writing() {
    let gguf = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gptq");
    let r = recipe("gptq-w4g64.yaml");
    let opts = ConvertOptions {
        dtype: FloatDtype::F32,
        force: false,
        recipe: None,
    };
    let err = quantize_rtn(&gguf, &r, &out, &opts, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gptq") && err.contains("gptq-w4g64.yaml"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no staging directory left"
    );
}
