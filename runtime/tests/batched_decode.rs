//! Continuous batching's decode step (several sequences at their own positions, one token
//! each, sharing the linears) against each sequence decoded alone with `forward` and its
//! cache, on tiny seeded Llama and Qwen2 models; and a cache that grows mid-sequence.

use std::path::Path;

use burn::prelude::*;
use lmq_runtime::config::Arch;
use lmq_runtime::model::{KvCache, Llama};
use lmq_runtime::weights::{tiny_config, MemorySource};
use lmq_runtime::Cpu;

/// Logits agree to this (f32 accumulation order differs between batched and single rows).
const BATCH_TOL: f32 = 1e-4;

fn model(arch: Arch) -> Llama<Cpu> {
    let c = tiny_config(arch);
    let src = MemorySource::random(&c, 5);
    Llama::load(&c, &src, Path::new("<tiny>"), &Default::default()).unwrap()
}

/// Runs `ids` through `forward` with `cache`, returning the last position's logits.
fn step(m: &Llama<Cpu>, ids: &[u32], cache: &mut KvCache) -> Vec<f32> {
    let data: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
    let input =
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &m.device());
    lmq_runtime::generate::last_logits(m.forward(input, Some(cache)))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn batched_decode_matches_each_sequence_alone() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = model(arch);
        let vocab = m.config.vocab_size;
        let prompts: [&[u32]; 3] = [&[1, 7, 9], &[1, 3, 4, 5, 6, 8, 10, 11], &[1]];
        // Alone: prefill then two single-token steps.
        let mut alone = vec![];
        for p in prompts {
            let mut c = m.new_cache(16);
            step(&m, p, &mut c);
            let a = step(&m, &[12], &mut c);
            let b = step(&m, &[13], &mut c);
            alone.push((a, b));
        }
        // Batched: same prefills (growable caches starting too small), then the two steps
        // for all three sequences at once.
        let mut caches: Vec<KvCache> = prompts
            .iter()
            .map(|p| {
                let mut c = m.new_growable_cache(2, 16);
                step(&m, p, &mut c);
                c
            })
            .collect();
        for (k, tok) in [12u32, 13].into_iter().enumerate() {
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let h = m.forward_decode_batch(&[tok; 3], &mut refs);
            let logits = m.logits(h).into_data().into_vec::<f32>().unwrap();
            for (i, want) in alone.iter().enumerate() {
                let want = if k == 0 { &want.0 } else { &want.1 };
                let got = &logits[i * vocab..][..vocab];
                let d = max_diff(got, want);
                assert!(d < BATCH_TOL, "{arch:?} seq {i} step {k}: max diff {d}");
            }
        }
        for (c, p) in caches.iter().zip(prompts) {
            assert_eq!(c.len(), p.len() + 2);
        }
    }
}
