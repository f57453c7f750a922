//! The CPU backend's fused decode step (`Llama::forward_last` on one token with a host
//! cache) against the layer-by-layer tensor path (`forward_last_generic`) on tiny seeded
//! models: Llama (tied head) and Qwen2 (biases, untied head), f32 weights and 4-bit packed
//! ones that take the int16 GEMV.

use std::path::Path;

use burn::prelude::*;
use lmq_runtime::config::{Arch, ModelConfig};
use lmq_runtime::model::{KvCache, Llama};
use lmq_runtime::packed::PackedLinear;
use lmq_runtime::weights::{tiny_config, MemorySource};
use lmq_runtime::Cpu;

/// Same arithmetic in another order (norm sums, attention) gives logits this close, relative
/// to the largest logit. Packed linears quantize their inputs to int16 per 64 columns, so a
/// last-bit difference upstream can move a code by one (2^-15 of the block's absmax).
const FUSED_STEP_TOL: f32 = 1e-4;

/// Widths that are whole 64-column blocks, so packed 4-bit g64 linears take the int16 GEMV.
fn config(arch: Arch) -> ModelConfig {
    ModelConfig {
        hidden_size: 64,
        intermediate_size: 128,
        head_dim: 16,
        ..tiny_config(arch)
    }
}

fn model(arch: Arch, packed: bool) -> Llama<Cpu> {
    let c = config(arch);
    let mut src = MemorySource::random(&c, 5);
    if packed {
        let linears = (0..c.num_layers).flat_map(|l| {
            c.decoder_linears()
                .map(|(name, _, _)| format!("model.layers.{l}.{name}"))
        });
        for prefix in linears.collect::<Vec<_>>() {
            let (shape, data) = src.tensors[&format!("{prefix}.weight")].clone();
            let (rows, cols) = (shape[0], shape[1]);
            let groups = cols / 64;
            let mut scale = vec![0.0f32; rows * groups];
            let mut codes = vec![0i8; rows * cols];
            for r in 0..rows {
                for g in 0..groups {
                    let part = &data[r * cols + g * 64..][..64];
                    let s = part.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 7.0;
                    scale[r * groups + g] = s;
                    for (j, v) in part.iter().enumerate() {
                        codes[r * cols + g * 64 + j] = (v / s).round().clamp(-8.0, 7.0) as i8;
                    }
                }
            }
            let p = PackedLinear::from_codes(4, rows, cols, 64, &codes, scale, None, None).unwrap();
            src.packed.insert(prefix, p);
        }
    }
    Llama::load(&c, &src, Path::new("<tiny>"), &Default::default()).unwrap()
}

fn one(m: &Llama<Cpu>, t: u32) -> Tensor<Cpu, 2, Int> {
    Tensor::from_data(TensorData::new(vec![t as i32], [1, 1]), &m.device())
}

fn argmax(v: &[f32]) -> u32 {
    lmq_runtime::sampling::argmax(v)
}

#[test]
fn fused_step_matches_the_tensor_path() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        for packed in [false, true] {
            let m = model(arch, packed);
            let c = &m.config;
            let mut fused = KvCache::growable(c.num_layers, 2, 40, c.num_kv_heads, c.head_dim);
            let mut generic = fused.clone();
            let prompt: Vec<i32> = vec![1, 7, 3, 9, 4];
            let input = Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(prompt.clone(), [1, prompt.len()]),
                &m.device(),
            );
            let a = m.forward_last(input.clone(), Some(&mut fused));
            let b = m.forward_last_generic(input, Some(&mut generic));
            let (mut ta, mut tb) = (argmax(&a), argmax(&b));
            // 30 greedy steps: the cache grows past its initial room several times.
            for step in 0..30 {
                assert_eq!(ta, tb, "{arch:?} packed {packed}: token at step {step}");
                let a = m.forward_last(one(&m, ta), Some(&mut fused));
                let b = m.forward_last_generic(one(&m, tb), Some(&mut generic));
                let d = rel_diff(&a, &b);
                assert!(
                    d < FUSED_STEP_TOL,
                    "{arch:?} packed {packed} step {step}: logits differ by {d} of the largest"
                );
                (ta, tb) = (argmax(&a), argmax(&b));
            }
            assert_eq!(fused.len(), generic.len());
        }
    }
}

#[test]
fn fused_step_refuses_a_position_past_the_context() {
    let m = model(Arch::Llama, false);
    let c = &m.config;
    let mut cache = KvCache::new(c.num_layers, 80, c.num_kv_heads, c.head_dim);
    for _ in 0..c.max_position_embeddings {
        m.forward_last(one(&m, 3), Some(&mut cache));
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.forward_last(one(&m, 3), Some(&mut cache))
    }));
    let msg = r.unwrap_err();
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("exceeds the model context"), "{msg}");
}

/// Largest absolute difference relative to the largest magnitude in `reference`.
fn rel_diff(a: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(a.len(), reference.len());
    let diff = a
        .iter()
        .zip(reference)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    diff / reference.iter().fold(1.0f32, |m, x| m.max(x.abs()))
}

fn host(t: Tensor<Cpu, 3>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap()
}

#[test]
fn fused_tree_and_chain_passes_match_the_tensor_path() {
    // root(0) ─ a(1) ─ c(3)
    //        └─ b(2) ─ d(4) ─ e(5)
    let parents = [None, Some(0), Some(0), Some(1), Some(2), Some(4)];
    let n = parents.len();
    let depths: Vec<usize> = (0..n)
        .map(|mut i| {
            let mut d = 0;
            while let Some(p) = parents[i] {
                (i, d) = (p, d + 1);
            }
            d
        })
        .collect();
    let mut mask = vec![false; n * n];
    for i in 0..n {
        let mut j = Some(i);
        while let Some(a) = j {
            mask[i * n + a] = true;
            j = parents[a];
        }
    }
    let tokens = [5u32, 9, 2, 11, 4, 8];
    for arch in [Arch::Llama, Arch::Qwen2] {
        for packed in [false, true] {
            let m = model(arch, packed);
            let c = &m.config;
            let mut fused = KvCache::growable(c.num_layers, 2, 40, c.num_kv_heads, c.head_dim);
            let prompt: Vec<i32> = vec![1, 7, 3, 9, 4];
            let input = Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(prompt.clone(), [1, prompt.len()]),
                &m.device(),
            );
            let mut generic = fused.clone();
            // A chain continuing a cache (speculative verification's pass).
            let a = host(m.forward_hidden(input.clone(), Some(&mut fused)));
            let b = host(m.forward_hidden_generic(input, Some(&mut generic)));
            let d = rel_diff(&a, &b);
            assert!(
                d < FUSED_STEP_TOL,
                "{arch:?} packed {packed}: chain off by {d}"
            );
            // A tree after the prompt.
            let a = host(m.forward_tree(&tokens, &depths, &mask, &mut fused));
            let b = host(m.forward_tree_generic(&tokens, &depths, &mask, &mut generic));
            let d = rel_diff(&a, &b);
            assert!(
                d < FUSED_STEP_TOL,
                "{arch:?} packed {packed}: tree off by {d}"
            );
            assert_eq!(fused.len(), generic.len());
        }
    }
}
