//! GPTQ through the calibrated pipeline on the real SmolLM2, kept short: the first three
//! layers, eight 256-token windows of the comparison calibration set in `shared/reference/`.
//! Every GPTQ linear has lower output error than RTN on the same inputs, the packed checkpoint
//! the runtime executes computes what its dequantized weights compute, and the report and
//! quantization config are written beside it.

use std::path::{Path, PathBuf};

use lmq_calibration::{build, Source};
use lmq_quant::calibrated::quantize_calibrated;
use lmq_quant::convert::ConvertOptions;
use lmq_quant::plan::QuantPlan;
use lmq_quant::recipe::{FloatDtype, Recipe};
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::model::Llama;
use lmq_runtime::weights::{DequantizedSource, SafetensorsDir};
use lmq_runtime::Cpu;

/// Packed and dense kernels sum in different orders; logits agree to f32 rounding.
const PACKED_LOGITS_REL_TOL: f32 = 1e-4;

fn calib_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/calib-smollm2-hellaswag-128x512-seed0.i32")
}

fn logits(model: &Llama<Cpu>, ids: &[u32]) -> Vec<f32> {
    model.logits_of(ids)
}

#[test]
fn gptq_on_three_smollm2_layers_beats_rtn_and_runs_packed() {
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let text = "calibration: {source: tokens:x.i32, num_samples: 8, seqlen: 256}\n\
                stages:\n  - passes:\n      - gptq:\n          scheme: W4A16\n          \
                group_size: 64\n          act_order: true\n          \
                targets: ['re:model\\.layers\\.[0-2]\\..*']\n";
    let recipe = Recipe::parse(text, Path::new("<test>.yaml")).unwrap();
    let plan = QuantPlan::from_recipe(&recipe, &*ckpt.weights, true).unwrap();
    assert_eq!(plan.linears.len(), 21);

    // The first 256 tokens of each of the first 8 reference windows.
    let full = build(&Source::Tokens(calib_file()), &ckpt.tokenizer, 8, 512, 0).unwrap();
    let mut calib = full.clone();
    calib.windows = full.windows.iter().map(|w| w[..256].to_vec()).collect();
    calib.seqlen = 256;

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gptq");
    let opts = ConvertOptions {
        dtype: FloatDtype::F32,
        force: false,
        recipe: Some(recipe.text.clone()),
    };
    let mut layers_done = 0;
    let (summary, model) = quantize_calibrated(
        &ckpt,
        &plan,
        &calib,
        &out,
        &opts,
        Default::default(),
        &mut |e| {
            if let lmq_quant::pipeline::PipelineEvent::LayerDone(_) = e {
                layers_done += 1
            }
        },
    )
    .unwrap();
    assert_eq!(
        layers_done, 3,
        "layers after the last quantized one are not run"
    );
    assert_eq!(summary.quantized_tensors, 21);
    for r in model.layers.iter().flat_map(|l| &l.linears) {
        let (g, rt) = (r.rel_output_error.unwrap(), r.rtn_rel_output_error.unwrap());
        assert!(g < rt, "{}: GPTQ {g:.3e} not below RTN {rt:.3e}", r.name);
        assert_eq!(r.retries, 0, "{}", r.name);
    }

    // Written: report, config with actorder, packed tensors the runtime runs.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("quantize-report.json")).unwrap())
            .unwrap();
    assert_eq!(report["calibration"]["windows"], 8);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let q = &config["quantization_config"];
    assert_eq!(q["format"], "pack-quantized");
    assert_eq!(
        q["config_groups"]["group_0"]["weights"]["actorder"],
        "group"
    );
    assert!(q["ignore"].as_array().unwrap().len() >= 27 * 7);

    let packed = Checkpoint::open_dir(&out).unwrap();
    assert!(packed
        .weights
        .names()
        .iter()
        .any(|n| n.ends_with("q_proj.weight_g_idx")));
    let packed_model = packed.load_model::<Cpu>(&Default::default()).unwrap();
    let dense_src = DequantizedSource::new(SafetensorsDir::open(&out).unwrap());
    let dense_model =
        Llama::<Cpu>::load(&packed.config, &dense_src, &out, &Default::default()).unwrap();
    let ids = packed
        .tokenizer
        .encode("The capital of France is Paris, and", false)
        .unwrap();
    let (a, b) = (logits(&packed_model, &ids), logits(&dense_model, &ids));
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() / scale < PACKED_LOGITS_REL_TOL,
            "logit {i}: {x} vs {y}"
        );
    }
}
