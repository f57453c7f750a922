//! Generation's forward pass on the host for the CPU backend (a decode step, a prompt or a
//! tree continuing a host KV cache, or one step of a batch of sequences each with its own):
//! the same arithmetic as the generic layer-by-layer path (RMSNorm, projections, RoPE,
//! cached attention, SwiGLU, the head) on plain slices. The generic path spent about as long
//! in burn's per-op dispatch, tensor copies and strided iteration as in the matrix kernels of
//! a 4-bit decode step, and a prompt's time in head-splitting copies and burn's naive
//! attention; here only the kernels remain.

use burn::backend::Flex;

use super::attention::Attention;
use super::host_ops::{add_in_place, rms_norm_rows, silu_mul_in_place};
use super::kv_cache::KvCache;
use super::linear::{host_matmul, host_matmul_many, Linear};
use super::llama::Llama;
use crate::generate::host_f32;
use crate::kernels::attention::{attention_cached, attention_tree, CachedAttnShape};

/// `x · Wᵀ + b` for `m` rows.
fn linear(x: &[f32], m: usize, l: &Linear<Flex>) -> Vec<f32> {
    let mut y = host_matmul(x, &l.weight, m);
    add_bias(&mut y, l);
    y
}

/// [`linear`] for the `N` layers that read the same input, in one call where the weights
/// allow it (see [`host_matmul_many`]).
fn linears<const N: usize>(x: &[f32], m: usize, ls: [&Linear<Flex>; N]) -> [Vec<f32>; N] {
    let mut ys = host_matmul_many(x, &ls.map(|l| &l.weight), m).into_iter();
    std::array::from_fn(|i| {
        let mut y = ys.next().expect("one output per weight");
        add_bias(&mut y, ls[i]);
        y
    })
}

fn add_bias(y: &mut [f32], l: &Linear<Flex>) {
    if let Some(b) = &l.bias {
        let b = host_f32(b.clone());
        for row in y.chunks_exact_mut(b.len()) {
            for (v, b) in row.iter_mut().zip(&b) {
                *v += b;
            }
        }
    }
}

/// `[t, heads, hd]` (token-major, as projections come out) to `[heads, t, hd]` (the cache's
/// and the attention kernel's head-major layout).
fn heads_major(x: &[f32], t: usize, heads: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for i in 0..t {
        for h in 0..heads {
            out[(h * t + i) * hd..][..hd].copy_from_slice(&x[(i * heads + h) * hd..][..hd]);
        }
    }
    out
}

/// Where a forward pass's new rows sit after the cached prefix.
#[derive(Debug, Clone, Copy)]
pub enum RowLayout<'a> {
    /// Row j at position `prefix + j`, attending causally: a prompt, a decode step, a
    /// speculative proposal being verified.
    Chain,
    /// A Medusa candidate tree: row j at position `prefix + depths[j]`, attending to the
    /// prefix and to row i where `mask[j * n + i]` (itself and its ancestors).
    Tree {
        depths: &'a [usize],
        mask: &'a [bool],
    },
}

/// The residual stream `[t, d]` after every decoder block for `tokens` at `positions`, with
/// each layer's attention done by `attend(layer, q, k, v)` on roped, token-major rows (`q`
/// `[t, heads·hd]`, `k`/`v` `[t, kv_heads·hd]`) returning `[t, heads·hd]`: the one place the
/// host block structure lives, whatever the rows are (a prompt, a tree, a batch of sequences).
fn host_blocks(
    model: &Llama<Flex>,
    tokens: &[u32],
    positions: &[usize],
    mut attend: impl FnMut(usize, &Attention<Flex>, Vec<f32>, Vec<f32>, Vec<f32>) -> Vec<f32>,
) -> Vec<f32> {
    let t = tokens.len();
    let eps = model.config.rms_norm_eps as f32;
    let mut x = model.embed_tokens.rows(tokens);
    for (i, layer) in model.layers.iter().enumerate() {
        let a = &layer.self_attn;
        let (hd, nh, nkv) = (a.head_dim, a.num_heads, a.num_kv_heads);
        let h = rms_norm_rows(&x, &host_f32(layer.input_layernorm.clone()), eps);
        let [mut q, mut k, v] = linears(&h, t, [&a.q_proj, &a.k_proj, &a.v_proj]);
        for (j, &p) in positions.iter().enumerate() {
            model
                .rope
                .apply_host(&mut q[j * nh * hd..(j + 1) * nh * hd], p);
            model
                .rope
                .apply_host(&mut k[j * nkv * hd..(j + 1) * nkv * hd], p);
        }
        let o = attend(i, a, q, k, v);
        add_in_place(&mut x, &linear(&o, t, &a.o_proj));
        let h = rms_norm_rows(&x, &host_f32(layer.post_attention_layernorm.clone()), eps);
        let [mut g, u] = linears(&h, t, [&layer.mlp.gate_proj, &layer.mlp.up_proj]);
        silu_mul_in_place(&mut g, &u);
        add_in_place(&mut x, &linear(&g, t, &layer.mlp.down_proj));
    }
    x
}

/// Panics unless a sequence reaching `positions` (and `last`) fits the model's context.
fn assert_fits(model: &Llama<Flex>, positions: usize, last: usize) {
    assert!(
        positions <= model.rope.max_positions() && last < model.rope.max_positions(),
        "sequence of {} positions exceeds the model context {}",
        positions.max(last + 1),
        model.rope.max_positions()
    );
}

/// The residual stream `[t, d]` after every decoder block for `tokens` continuing `cache`
/// laid out as `layout`; the cache grows by `tokens.len()` rows.
fn decoder_rows(
    model: &Llama<Flex>,
    tokens: &[u32],
    layout: RowLayout,
    cache: &mut KvCache,
) -> Vec<f32> {
    let t = tokens.len();
    assert!(t > 0, "no tokens");
    let pos = cache.len();
    let positions: Vec<usize> = match layout {
        RowLayout::Chain => (pos..pos + t).collect(),
        RowLayout::Tree { depths, mask } => {
            assert_eq!(depths.len(), t, "one depth per tree node");
            assert_eq!(mask.len(), t * t, "tree mask shape");
            depths.iter().map(|&d| pos + d).collect()
        }
    };
    assert_fits(
        model,
        pos + t,
        positions.iter().max().copied().unwrap_or(pos),
    );
    cache.reserve(pos + t);
    let x = host_blocks(model, tokens, &positions, |i, a, mut q, mut k, mut v| {
        let (hd, nh, nkv) = (a.head_dim, a.num_heads, a.num_kv_heads);
        if t > 1 {
            q = heads_major(&q, t, nh, hd);
            k = heads_major(&k, t, nkv, hd);
            v = heads_major(&v, t, nkv, hd);
        }
        let capacity = cache.capacity();
        let (kc, vc) = cache.append(i, &k, &v, t);
        let shape = CachedAttnShape {
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            queries: t,
            len: pos + t,
            capacity,
        };
        match layout {
            RowLayout::Chain => attention_cached(&q, kc, vc, shape),
            RowLayout::Tree { mask, .. } => attention_tree(&q, kc, vc, shape, mask),
        }
    });
    cache.advance(t);
    x
}

/// Final hidden states `[n, d]` (after the output norm) for one new token of each of `n`
/// sequences, each continuing its own cache: the linears read their weights once for all
/// rows, and each row attends over its own cache exactly as a decode step of its sequence
/// alone would (continuous batching, and batched distillation answers).
pub(crate) fn forward_decode_batch(
    model: &Llama<Flex>,
    tokens: &[u32],
    caches: &mut [&mut KvCache],
) -> Vec<f32> {
    let n = tokens.len();
    assert!(n > 0 && n == caches.len(), "one cache per token");
    let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    for (c, &p) in caches.iter_mut().zip(&positions) {
        assert_fits(model, p + 1, p);
        c.reserve(p + 1);
    }
    let x = host_blocks(model, tokens, &positions, |i, a, q, k, v| {
        let (hd, nh, nkv) = (a.head_dim, a.num_heads, a.num_kv_heads);
        let mut o = Vec::with_capacity(q.len());
        for (j, c) in caches.iter_mut().enumerate() {
            let capacity = c.capacity();
            // One row is token-major and head-major alike.
            let (kc, vc) = c.append(
                i,
                &k[j * nkv * hd..][..nkv * hd],
                &v[j * nkv * hd..][..nkv * hd],
                1,
            );
            let shape = CachedAttnShape {
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                queries: 1,
                len: positions[j] + 1,
                capacity,
            };
            o.extend(attention_cached(
                &q[j * nh * hd..][..nh * hd],
                kc,
                vc,
                shape,
            ));
        }
        o
    });
    for c in caches.iter_mut() {
        c.advance(1);
    }
    let eps = model.config.rms_norm_eps as f32;
    rms_norm_rows(&x, &host_f32(model.norm.clone()), eps)
}

/// Last-position logits for `tokens` at positions `cache.len()..`; the cache grows by
/// `tokens.len()` positions. One token is a decode step; more are a prompt (chunk).
pub(crate) fn forward_last(model: &Llama<Flex>, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
    let d = model.config.hidden_size;
    let x = decoder_rows(model, tokens, RowLayout::Chain, cache);
    let eps = model.config.rms_norm_eps as f32;
    let h = rms_norm_rows(&x[x.len() - d..], &host_f32(model.norm.clone()), eps);
    match &model.lm_head {
        Some(head) => linear(&h, 1, head),
        None => host_matmul(&h, &model.embed_tokens, 1),
    }
}

/// Final hidden states `[t, d]` (after the output norm) of every row of `tokens` continuing
/// `cache` as `layout`: what speculative verification needs, without burn's per-op dispatch.
pub(crate) fn forward_rows(
    model: &Llama<Flex>,
    tokens: &[u32],
    layout: RowLayout,
    cache: &mut KvCache,
) -> Vec<f32> {
    let x = decoder_rows(model, tokens, layout, cache);
    let eps = model.config.rms_norm_eps as f32;
    rms_norm_rows(&x, &host_f32(model.norm.clone()), eps)
}
