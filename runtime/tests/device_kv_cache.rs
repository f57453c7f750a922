//! The device-resident KV cache (`KvCache::on_device`, what the GPU backend uses) run on the
//! CPU backend against the host cache and against full recomputation: prefill, single-token
//! steps, a multi-token continuation (speculative verification's shape), `truncate`, growth
//! past the initial capacity, batched decoding, and a Medusa tree with `keep_rows`, on tiny
//! seeded Llama and Qwen2 models.

use std::path::Path;

use burn::prelude::*;
use lmq_runtime::config::Arch;
use lmq_runtime::model::{KvCache, Llama};
use lmq_runtime::weights::{tiny_config, MemorySource};
use lmq_runtime::Cpu;

/// Logits agree to this: the same math, attention summed in another order.
const TOL: f32 = 1e-4;

fn model(arch: Arch) -> Llama<Cpu> {
    let c = tiny_config(arch);
    let src = MemorySource::random(&c, 11);
    Llama::load(&c, &src, Path::new("<tiny>"), &Default::default()).unwrap()
}

/// All positions' logits of `ids` continuing `cache` (or from 0 without one).
fn run(m: &Llama<Cpu>, ids: &[u32], cache: Option<&mut KvCache>) -> Vec<f32> {
    let data: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
    let input =
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &m.device());
    m.forward(input, cache)
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn fresh(m: &Llama<Cpu>, capacity: usize) -> (KvCache, KvCache) {
    let c = &m.config;
    let host = KvCache::growable(c.num_layers, 2, capacity, c.num_kv_heads, c.head_dim);
    (host.clone(), host.on_device())
}

#[test]
fn device_cache_matches_host_cache_and_recomputation() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = model(arch);
        let vocab = m.config.vocab_size;
        let (mut host, mut dev) = fresh(&m, 32);
        assert!(dev.is_on_device() && !host.is_on_device());
        let mut seq: Vec<u32> = vec![1, 5, 9, 2, 7];
        // Prefill (grows past the initial capacity of 2).
        let (a, b) = (
            run(&m, &seq, Some(&mut host)),
            run(&m, &seq, Some(&mut dev)),
        );
        assert!(
            max_diff(&a, &b) < TOL,
            "{arch:?} prefill: {}",
            max_diff(&a, &b)
        );
        // Single-token steps, each checked against the whole sequence recomputed.
        for t in [3u32, 11, 4] {
            seq.push(t);
            let (a, b) = (
                run(&m, &[t], Some(&mut host)),
                run(&m, &[t], Some(&mut dev)),
            );
            let full = run(&m, &seq, None);
            let last = &full[full.len() - vocab..];
            assert!(
                max_diff(&a, &b) < TOL,
                "{arch:?} step: {}",
                max_diff(&a, &b)
            );
            assert!(
                max_diff(last, &b) < TOL,
                "{arch:?} step vs full: {}",
                max_diff(last, &b)
            );
        }
        // A 3-token continuation (each position sees only its prefix), then roll it back.
        let before = dev.len();
        let cont = [6u32, 8, 10];
        let (a, b) = (
            run(&m, &cont, Some(&mut host)),
            run(&m, &cont, Some(&mut dev)),
        );
        let mut all = seq.clone();
        all.extend(cont);
        let full = run(&m, &all, None);
        assert!(
            max_diff(&a, &b) < TOL,
            "{arch:?} continuation: {}",
            max_diff(&a, &b)
        );
        assert!(
            max_diff(&full[full.len() - 3 * vocab..], &b) < TOL,
            "{arch:?} continuation vs full"
        );
        host.truncate(before);
        dev.truncate(before);
        // After the rollback a different token continues from the kept prefix.
        seq.push(12);
        let b = run(&m, &[12], Some(&mut dev));
        let full = run(&m, &seq, None);
        assert!(
            max_diff(&full[full.len() - vocab..], &b) < TOL,
            "{arch:?} after truncate: {}",
            max_diff(&full[full.len() - vocab..], &b)
        );
    }
}

/// The last position's logits of `ids` continuing `cache`.
fn last(m: &Llama<Cpu>, ids: &[u32], cache: &mut KvCache) -> Vec<f32> {
    let v = run(m, ids, Some(cache));
    v[v.len() - m.config.vocab_size..].to_vec()
}

#[test]
fn batched_decode_with_device_caches_matches_host_caches() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = model(arch);
        let prompts: [&[u32]; 3] = [&[1, 7, 9], &[1, 3, 4, 5, 6, 8, 10], &[1]];
        let (mut host, mut dev): (Vec<KvCache>, Vec<KvCache>) = prompts
            .iter()
            .map(|p| {
                let (mut h, mut d) = fresh(&m, 16);
                last(&m, p, &mut h);
                last(&m, p, &mut d);
                (h, d)
            })
            .unzip();
        for tokens in [[12u32, 13, 14], [4, 5, 6]] {
            let a =
                m.logits(m.forward_decode_batch(&tokens, &mut host.iter_mut().collect::<Vec<_>>()));
            let b =
                m.logits(m.forward_decode_batch(&tokens, &mut dev.iter_mut().collect::<Vec<_>>()));
            let (a, b) = (
                a.into_data().into_vec::<f32>().unwrap(),
                b.into_data().into_vec::<f32>().unwrap(),
            );
            assert!(
                max_diff(&a, &b) < TOL,
                "{arch:?} batched: {}",
                max_diff(&a, &b)
            );
        }
    }
}

#[test]
fn medusa_tree_with_a_device_cache_matches_the_host_cache() {
    use lmq_runtime::medusa::tree::Tree;
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = model(arch);
        let tree =
            Tree::from_choices(&[&[0], &[1], &[0, 0], &[0, 1], &[1, 0], &[0, 0, 0]], 4).unwrap();
        let tokens = tree.tokens(9, &[vec![3, 4], vec![5, 6], vec![7]]);
        let depths: Vec<usize> = tree.nodes.iter().map(|n| n.depth).collect();
        let prefix = [1u32, 7, 8, 2];
        let (mut host, mut dev) = fresh(&m, 32);
        last(&m, &prefix, &mut host);
        last(&m, &prefix, &mut dev);
        let mask = tree.attention_mask();
        let a = m
            .forward_tree(&tokens, &depths, &mask, &mut host)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let b = m
            .forward_tree(&tokens, &depths, &mask, &mut dev)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert!(
            max_diff(&a, &b) < TOL,
            "{arch:?} tree: {}",
            max_diff(&a, &b)
        );
        host.keep_rows::<Cpu>(prefix.len(), &[0, 1, 3, 6]);
        dev.keep_rows::<Cpu>(prefix.len(), &[0, 1, 3, 6]);
        let (a, b) = (last(&m, &[11], &mut host), last(&m, &[11], &mut dev));
        assert!(
            max_diff(&a, &b) < TOL,
            "{arch:?} after keep_rows: {}",
            max_diff(&a, &b)
        );
    }
}
