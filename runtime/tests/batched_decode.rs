//! Continuous batching's decode step (several sequences at their own positions, one token
//! each, sharing the linears) against each sequence decoded alone with `forward` and its
//! cache, on tiny seeded Llama and Qwen2 models (the CPU's fused step also bit for bit); and a
//! cache that grows mid-sequence.

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

/// The CPU's fused batched step against the layer-by-layer reference (within [`BATCH_TOL`]),
/// and against each sequence's own fused decode step bit for bit: the few-row kernels give
/// every output row the same FMA order whatever rows share its pass, and each row attends
/// over its own cache with the single-sequence kernel, so batching changes no token.
#[test]
fn fused_batched_decode_is_each_sequence_alone_bit_for_bit() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = model(arch);
        let vocab = m.config.vocab_size;
        let prompts: [&[u32]; 4] = [&[1, 7, 9], &[1, 3, 4, 5, 6, 8, 10, 11], &[1], &[2, 2]];
        let prefilled = || -> Vec<KvCache> {
            prompts
                .iter()
                .map(|p| {
                    let mut c = m.new_growable_cache(2, 16);
                    step(&m, p, &mut c);
                    c
                })
                .collect()
        };
        let (mut fused, mut generic, mut alone) = (prefilled(), prefilled(), prefilled());
        for tok in [12u32, 13, 14] {
            let toks = [tok, tok + 1, tok + 2, tok + 3];
            let mut refs: Vec<&mut KvCache> = fused.iter_mut().collect();
            let f = m.logits(m.forward_decode_batch(&toks, &mut refs));
            let f = f.into_data().into_vec::<f32>().unwrap();
            let mut refs: Vec<&mut KvCache> = generic.iter_mut().collect();
            let g = m.logits(m.forward_decode_batch_generic(&toks, &mut refs));
            let g = g.into_data().into_vec::<f32>().unwrap();
            let d = max_diff(&f, &g);
            assert!(d < BATCH_TOL, "{arch:?} fused vs generic: max diff {d}");
            for (i, c) in alone.iter_mut().enumerate() {
                let input = Tensor::<Cpu, 2, Int>::from_data(
                    TensorData::new(vec![toks[i] as i32], [1, 1]),
                    &m.device(),
                );
                let want = m.forward_last(input, Some(c));
                assert_eq!(
                    &f[i * vocab..][..vocab],
                    &want[..],
                    "{arch:?} seq {i} token {tok}: batched bits differ from alone"
                );
            }
        }
    }
}

/// Batched greedy answers (slots refilled as sequences stop) are `generate`'s, token for token.
#[test]
fn batched_greedy_answers_are_generate_s() {
    use lmq_runtime::generate::generate;
    use lmq_runtime::generate_batch::generate_greedy_batch;
    use lmq_runtime::sampling::SamplingParams;
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = model(arch);
        let prompts: Vec<Vec<u32>> = (0..5u32)
            .map(|i| (0..=i * 2).map(|j| 1 + (i * 7 + j * 3) % 30).collect())
            .collect();
        let alone = |stop: &[u32]| -> Vec<Vec<u32>> {
            prompts
                .iter()
                .map(|p| generate(&m, p, 6, SamplingParams::default(), stop, |_| {}).unwrap())
                .collect()
        };
        // A stop token some answers reach early, so slots free up at different steps.
        let stop = [alone(&[])[0][2]];
        let want = alone(&stop);
        let mut done = vec![];
        let got = generate_greedy_batch(&m, &prompts, 6, &stop, 2, |i| done.push(i)).unwrap();
        assert_eq!(got, want, "{arch:?}");
        assert!(want.iter().any(|a| a.len() < 6), "no answer stopped early");
        done.sort();
        assert_eq!(
            done,
            (0..5).collect::<Vec<_>>(),
            "each answer reported once"
        );
    }
}

/// Medusa's tree pass: every node's hidden state equals a plain forward of the prefix plus
/// that node's path (ancestors, then itself); keeping one path leaves the cache as if that
/// path had been decoded.
#[test]
fn tree_forward_equals_each_path_run_alone() {
    use lmq_runtime::medusa::Tree;
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = model(arch);
        let d = m.config.hidden_size;
        let tree =
            Tree::from_choices(&[&[0], &[1], &[0, 0], &[0, 1], &[1, 0], &[0, 0, 0]], 4).unwrap();
        let tokens = tree.tokens(9, &[vec![3, 4], vec![5, 6], vec![7]]);
        let depths: Vec<usize> = tree.nodes.iter().map(|n| n.depth).collect();
        let prefix = [1u32, 7, 8, 2];
        let mut cache = m.new_growable_cache(4, 32);
        step(&m, &prefix, &mut cache);
        let hidden = m
            .forward_tree(&tokens, &depths, &tree.attention_mask(), &mut cache)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        for i in 0..tree.len() {
            let mut path = vec![];
            let mut j = Some(i);
            while let Some(k) = j {
                path.push(tokens[k]);
                j = tree.nodes[k].parent;
            }
            path.reverse();
            let mut ids = prefix.to_vec();
            ids.extend(&path);
            let data: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
            let input = Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(data, [1, ids.len()]),
                &m.device(),
            );
            let want = m
                .forward_hidden_generic(input, None)
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            let want = &want[(ids.len() - 1) * d..][..d];
            let diff = max_diff(&hidden[i * d..][..d], want);
            assert!(diff < BATCH_TOL, "{arch:?} node {i}: {diff}");
        }
        // Keep root → [0] → [0,0] → [0,0,0] (nodes 0, 1, 3, 6), then decode one more token.
        cache.keep_rows::<Cpu>(prefix.len(), &[0, 1, 3, 6]);
        assert_eq!(cache.len(), prefix.len() + 4);
        let got = step(&m, &[11], &mut cache);
        let mut alone = m.new_cache(16);
        let want = step(&m, &[1, 7, 8, 2, 9, 3, 5, 7, 11], &mut alone);
        assert!(
            max_diff(&got, &want) < BATCH_TOL,
            "{arch:?} after keep_rows"
        );
    }
}
