//! Packed execution: a model whose linears are RTN-quantized and packed in compressed-tensors
//! `pack-quantized` form computes (with the fused packed kernels) the same logits as the same
//! weights dequantized to f32, both from memory and from a checkpoint directory on disk.

use std::collections::BTreeMap;
use std::path::Path;

use lmq_quant::rtn;
use lmq_quant::safetensors_writer::{encode_f32, write_streaming, StDtype, TensorSpec};
use lmq_quant::scheme::{QuantScheme, WeightMatrix};
use lmq_runtime::burn::prelude::*;
use lmq_runtime::config::{Arch, ModelConfig};
use lmq_runtime::model::Llama;
use lmq_runtime::weights::{tiny_config, MemorySource, SafetensorsDir, WeightSource};
use lmq_runtime::Cpu;

/// Packed kernels accumulate per group in f32 in another order than the dense path.
const PACKED_LOGITS_REL_TOL: f32 = 1e-4;

const TOKENS: [i32; 9] = [1, 5, 9, 33, 2, 17, 17, 40, 3];

fn linear_prefixes(c: &ModelConfig) -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..c.num_layers {
        for m in lmq_runtime::config::DECODER_LINEARS {
            v.push(format!("model.layers.{i}.{m}"));
        }
    }
    v
}

/// Returns (packed model source, dequantized f32 source).
fn quantized_pair(c: &ModelConfig, scheme: QuantScheme) -> (MemorySource, MemorySource) {
    let base = MemorySource::random(c, 3);
    let (mut packed, mut dequant) = (base.clone(), base.clone());
    for p in linear_prefixes(c) {
        let name = format!("{p}.weight");
        let (shape, data) = base.tensors[&name].clone();
        let q = rtn::quantize(
            &WeightMatrix::new(&name, &data, shape[0], shape[1]).unwrap(),
            &scheme,
        )
        .unwrap();
        let pl = q.to_packed().unwrap();
        dequant.insert(&name, shape.clone(), rtn::dequantize(&q).unwrap());
        assert_eq!(
            pl.dequantize_ref(),
            rtn::dequantize(&q).unwrap(),
            "{name}: packed reference differs from RTN's"
        );
        packed.tensors.remove(&name);
        packed.packed.insert(p, pl);
    }
    (packed, dequant)
}

fn logits(c: &ModelConfig, src: &dyn WeightSource) -> Vec<f32> {
    let model = Llama::<Cpu>::load(c, src, Path::new("<test>"), &Default::default()).unwrap();
    let ids: Vec<u32> = TOKENS.iter().map(|&t| t as u32).collect();
    model.logits_of(&ids)
}

/// The same logits through the KV cache: a 4-token prefill then single tokens, so every
/// linear runs the fused GEMV kernels (≤ 8 rows) instead of the banded prefill path.
fn decode_logits(c: &ModelConfig, src: &dyn WeightSource) -> Vec<f32> {
    let model = Llama::<Cpu>::load(c, src, Path::new("<test>"), &Default::default()).unwrap();
    let mut cache = model.new_cache(TOKENS.len());
    let mut out = Vec::new();
    let mut pos = 0;
    for chunk in [4, 1, 1, 1, 1, 1] {
        let ids = TOKENS[pos..pos + chunk].to_vec();
        let input =
            Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [1, chunk]), &Default::default());
        out.extend(
            model
                .forward(input, Some(&mut cache))
                .into_data()
                .into_vec::<f32>()
                .unwrap(),
        );
        pos += chunk;
    }
    out
}

fn assert_close(a: &[f32], b: &[f32]) {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        err <= PACKED_LOGITS_REL_TOL * scale,
        "max diff {err} (scale {scale})"
    );
}

#[test]
fn packed_weights_compute_what_their_dequantized_floats_compute() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let c = tiny_config(arch);
        for scheme in [
            QuantScheme {
                bits: 4,
                group_size: Some(16),
                symmetric: false,
            },
            QuantScheme {
                bits: 4,
                group_size: Some(16),
                symmetric: true,
            },
            QuantScheme::W8A16,
        ] {
            let (packed, dequant) = quantized_pair(&c, scheme);
            let want = logits(&c, &dequant);
            assert_close(&logits(&c, &packed), &want);
            assert_close(&decode_logits(&c, &packed), &want);
        }
    }
}

#[test]
fn packed_checkpoint_directory_loads_and_matches() {
    let c = tiny_config(Arch::Llama);
    let scheme = QuantScheme {
        bits: 4,
        group_size: Some(16),
        symmetric: false,
    };
    let (packed, dequant) = quantized_pair(&c, scheme);
    let tmp = tempfile::tempdir().unwrap();

    // Float tensors as F32, packed linears as compressed-tensors defines them.
    let mut specs = Vec::new();
    let mut bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, (shape, data)) in &packed.tensors {
        specs.push(TensorSpec {
            name: name.clone(),
            dtype: StDtype::F32,
            shape: shape.clone(),
        });
        bytes.insert(name.clone(), encode_f32(data, StDtype::F32));
    }
    for (prefix, p) in &packed.packed {
        let le32 = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let n_groups = p.n_groups();
        let zp = p.packed_zero_point().unwrap().unwrap();
        for (suffix, dtype, shape, data) in [
            (
                "weight_packed",
                StDtype::I32,
                vec![p.rows, p.words_per_row()],
                le32(&p.packed),
            ),
            (
                "weight_scale",
                StDtype::F32,
                vec![p.rows, n_groups],
                encode_f32(&p.scale, StDtype::F32),
            ),
            (
                "weight_zero_point",
                StDtype::I32,
                vec![zp.len() / n_groups, n_groups],
                le32(&zp),
            ),
            (
                "weight_shape",
                StDtype::I64,
                vec![2],
                [p.rows as i64, p.cols as i64]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
        ] {
            let name = format!("{prefix}.{suffix}");
            specs.push(TensorSpec {
                name: name.clone(),
                dtype,
                shape,
            });
            bytes.insert(name, data);
        }
    }
    write_streaming(
        &tmp.path().join("model.safetensors"),
        &specs,
        &BTreeMap::new(),
        |s| Ok(bytes[&s.name].clone()),
    )
    .unwrap();
    let mut config = c.to_hf_json();
    config["quantization_config"] = serde_json::json!({
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": false, "strategy": "group", "group_size": 16}}},
        "ignore": ["lm_head"]
    });
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();

    let dir = SafetensorsDir::open(tmp.path()).unwrap();
    assert_close(&logits(&c, &dir), &logits(&c, &dequant));
}
