//! Grouped-query self-attention with rotary embeddings, a causal mask and an optional KV cache.

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::kv_cache::KvCache;
use super::linear::{Linear, LinearBackend};
use super::rope::Rope;
use crate::kernels::attention::{attention_cached, attention_tree, CachedAttnShape};

/// The four projections of one attention block and its head geometry.
#[derive(Debug, Clone)]
pub struct Attention<B: LinearBackend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Splits `[b, t, heads*hd]` into `[b, heads, t, hd]`.
fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize, hd: usize) -> Tensor<B, 4> {
    let [b, t, _] = x.dims();
    x.reshape([b, t, heads, hd]).swap_dims(1, 2)
}

/// Repeats each key/value head `rep` times so every query head has its own.
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, rep: usize) -> Tensor<B, 4> {
    if rep == 1 {
        return x;
    }
    let [b, h, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, rep, t, d])
        .reshape([b, h * rep, t, d])
}

impl<B: LinearBackend> Attention<B> {
    /// Causal attention over exactly the given keys (no cached prefix), `[b, heads, t, d]`.
    fn dense_attention(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        rep: usize,
    ) -> Tensor<B, 4> {
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        attention(q, repeat_kv(k, rep), repeat_kv(v, rep), None, None, options)
    }

    /// `t` queries at positions `start..start + t` over all `start + t` cached keys, each
    /// query seeing the keys up to its own position (`[1, heads, t, d]`).
    fn prefix_attention(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        rep: usize,
        start: usize,
    ) -> Tensor<B, 4> {
        let t = q.dims()[2];
        let len = k.dims()[2];
        // Query i (position start + i) sees keys 0..=start + i.
        let hidden = (t > 1).then(|| {
            (0..t)
                .flat_map(|i| (0..len).map(move |j| j > start + i))
                .collect()
        });
        self.masked_attention(q, k, v, rep, hidden)
    }

    /// Attention of `q` (`[1, heads, t, d]`) over exactly `k`, `v` (`[1, kv_heads, len, d]`),
    /// hiding the keys where `hidden` (`[t, len]`, row-major) is true: burn's mask meaning.
    fn masked_attention(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        rep: usize,
        hidden: Option<Vec<bool>>,
    ) -> Tensor<B, 4> {
        let [_, heads, t, _] = q.dims();
        let len = k.dims()[2];
        let mask = hidden.map(|h| {
            Tensor::<B, 4, Bool>::from_data(TensorData::new(h, [1, 1, t, len]), &q.device())
                .expand([1, heads, t, len])
        });
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        attention(q, repeat_kv(k, rep), repeat_kv(v, rep), mask, None, options)
    }

    /// Attends `x` (`[b, t, hidden]`, first token at position `start`) to itself and to the
    /// cached prefix, updating the cache of `layer` when one is given.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        start: usize,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let q = B::rope_heads(self.q_proj.forward(x.clone()), rope, self.num_heads, start);
        let k = B::rope_heads(
            self.k_proj.forward(x.clone()),
            rope,
            self.num_kv_heads,
            start,
        );
        let v = split_heads(self.v_proj.forward(x), self.num_kv_heads, self.head_dim);
        let rep = self.num_heads / self.num_kv_heads;
        let out = match cache {
            Some((cache, layer)) if cache.is_on_device() => {
                assert_eq!(b, 1, "the KV cache holds one sequence");
                let (kc, vc) = cache.append_device(layer, k.clone(), v.clone());
                let len = start + t;
                if start == 0 && t > 1 {
                    self.dense_attention(q, k, v, rep)
                } else {
                    let fused = if t == 1 {
                        B::decode_attention(q.clone(), &kc, &vc, len)
                    } else {
                        None
                    };
                    if let Some(o) = fused {
                        return self.o_proj.forward(o);
                    }
                    let filled = [0..1, 0..self.num_kv_heads, 0..len, 0..self.head_dim];
                    self.prefix_attention(q, kc.slice(filled.clone()), vc.slice(filled), rep, start)
                }
            }
            Some((cache, layer)) => {
                assert_eq!(b, 1, "the KV cache holds one sequence");
                let kd = k.clone().into_data().into_vec::<f32>().expect("f32 keys");
                let vd = v.clone().into_data().into_vec::<f32>().expect("f32 values");
                let len = cache.len() + t;
                let capacity = cache.capacity();
                let (kc, vc) = cache.append(layer, &kd, &vd, t);
                if start == 0 && t > 1 {
                    // A fresh prompt: burn's blocked attention over the new keys is faster.
                    self.dense_attention(q, k, v, rep)
                } else {
                    let device = q.device();
                    let qd = q.into_data().into_vec::<f32>().expect("f32 queries");
                    let shape = CachedAttnShape {
                        heads: self.num_heads,
                        kv_heads: self.num_kv_heads,
                        head_dim: self.head_dim,
                        queries: t,
                        len,
                        capacity,
                    };
                    let o = attention_cached(&qd, kc, vc, shape);
                    return self.o_proj.forward(Tensor::from_data(
                        TensorData::new(o, [1, t, self.num_heads * self.head_dim]),
                        &device,
                    ));
                }
            }
            None => self.dense_attention(q, k, v, rep),
        };
        let out = out
            .swap_dims(1, 2)
            .reshape([b, t, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }

    /// [`Self::forward_decode_batch`] with device caches: the projections batched, then per
    /// sequence its rotation, cache append and attention, all on the backend.
    fn decode_batch_device(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Tensor<B, 3> {
        let (hd, qw, kw) = (
            self.head_dim,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let rep = self.num_heads / self.num_kv_heads;
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        let mut outs = Vec::with_capacity(caches.len());
        for (i, cache) in caches.iter_mut().enumerate() {
            let pos = cache.len();
            let row = |t: &Tensor<B, 3>, w: usize| t.clone().slice([i..i + 1, 0..1, 0..w]);
            let qi = B::rope_heads(row(&q, qw), rope, self.num_heads, pos);
            let ki = B::rope_heads(row(&k, kw), rope, self.num_kv_heads, pos);
            let vi = split_heads(row(&v, kw), self.num_kv_heads, hd);
            let (kc, vc) = cache.append_device(layer, ki, vi);
            let o = match B::decode_attention(qi.clone(), &kc, &vc, pos + 1) {
                Some(o) => o,
                None => {
                    let filled = [0..1, 0..self.num_kv_heads, 0..pos + 1, 0..hd];
                    self.prefix_attention(qi, kc.slice(filled.clone()), vc.slice(filled), rep, pos)
                        .swap_dims(1, 2)
                        .reshape([1, 1, qw])
                }
            };
            outs.push(o);
        }
        self.o_proj.forward(Tensor::cat(outs, 0))
    }

    /// [`Self::forward_tree`] with a device cache: node `i` rotated for position
    /// `prefix + depths[i]`, appended in node order, attending to the prefix and to the nodes
    /// `mask` allows.
    fn tree_device(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        cache: &mut KvCache,
        layer: usize,
        depths: &[usize],
        mask: &[bool],
    ) -> Tensor<B, 3> {
        let [_, n, _] = x.dims();
        let (hd, qw) = (self.head_dim, self.num_heads * self.head_dim);
        let rep = self.num_heads / self.num_kv_heads;
        let prefix = cache.len();
        let positions: Vec<usize> = depths.iter().map(|&d| prefix + d).collect();
        let q = rope.apply_positions(
            split_heads(self.q_proj.forward(x.clone()), self.num_heads, hd),
            &positions,
        );
        let k = rope.apply_positions(
            split_heads(self.k_proj.forward(x.clone()), self.num_kv_heads, hd),
            &positions,
        );
        let v = split_heads(self.v_proj.forward(x), self.num_kv_heads, hd);
        let (kc, vc) = cache.append_device(layer, k, v);
        let len = prefix + n;
        let filled = [0..1, 0..self.num_kv_heads, 0..len, 0..hd];
        // Node i sees the prefix and the nodes `mask` marks (its ancestors and itself).
        let hidden = (0..n)
            .flat_map(|i| (0..len).map(move |j| j >= prefix && !mask[i * n + (j - prefix)]))
            .collect();
        let o = self.masked_attention(
            q,
            kc.slice(filled.clone()),
            vc.slice(filled),
            rep,
            Some(hidden),
        );
        self.o_proj.forward(o.swap_dims(1, 2).reshape([1, n, qw]))
    }

    /// One new token for each of several sequences (`x`: `[n, 1, hidden]`), each continuing
    /// its own cache at its own position: the projections run batched (the weights are read
    /// once for all sequences), rotation and attention per sequence on the host.
    pub fn forward_decode_batch(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Tensor<B, 3> {
        let [n, t, _] = x.dims();
        assert_eq!(t, 1, "batched decoding takes one token per sequence");
        assert_eq!(n, caches.len(), "one cache per sequence");
        if caches.iter().all(|c| c.is_on_device()) {
            return self.decode_batch_device(x, rope, caches, layer);
        }
        assert!(
            caches.iter().all(|c| !c.is_on_device()),
            "batched decoding needs all KV caches on the host or all on the device"
        );
        let device = x.device();
        let host = |y: Tensor<B, 3>| y.into_data().into_vec::<f32>().expect("f32 activations");
        let mut q = host(self.q_proj.forward(x.clone()));
        let mut k = host(self.k_proj.forward(x.clone()));
        let v = host(self.v_proj.forward(x));
        let (qw, kw) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let mut out = Vec::with_capacity(n * qw);
        for (i, cache) in caches.iter_mut().enumerate() {
            let pos = cache.len();
            let qi = &mut q[i * qw..][..qw];
            let ki = &mut k[i * kw..][..kw];
            rope.apply_host(qi, pos);
            rope.apply_host(ki, pos);
            let capacity = cache.capacity();
            let (kc, vc) = cache.append(layer, ki, &v[i * kw..][..kw], 1);
            let shape = CachedAttnShape {
                heads: self.num_heads,
                kv_heads: self.num_kv_heads,
                head_dim: self.head_dim,
                queries: 1,
                len: pos + 1,
                capacity,
            };
            out.extend(attention_cached(qi, kc, vc, shape));
        }
        self.o_proj
            .forward(Tensor::from_data(TensorData::new(out, [n, 1, qw]), &device))
    }

    /// A Medusa candidate tree after the cached prefix (`x`: `[1, n, hidden]`, node i at
    /// position `prefix + depths[i]`, seeing the prefix and the nodes `mask` allows). The
    /// nodes' keys and values are appended in node order; the caller keeps the accepted
    /// path with `KvCache::keep_rows`.
    pub fn forward_tree(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        cache: &mut KvCache,
        layer: usize,
        depths: &[usize],
        mask: &[bool],
    ) -> Tensor<B, 3> {
        let [_, n, _] = x.dims();
        if cache.is_on_device() {
            return self.tree_device(x, rope, cache, layer, depths, mask);
        }
        let device = x.device();
        let host = |y: Tensor<B, 3>| y.into_data().into_vec::<f32>().expect("f32 activations");
        let mut q = host(self.q_proj.forward(x.clone()));
        let mut k = host(self.k_proj.forward(x.clone()));
        let v = host(self.v_proj.forward(x));
        let (hd, qw, kw) = (
            self.head_dim,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let prefix = cache.len();
        for (i, &depth) in depths.iter().enumerate() {
            rope.apply_host(&mut q[i * qw..][..qw], prefix + depth);
            rope.apply_host(&mut k[i * kw..][..kw], prefix + depth);
        }
        // Token-major [n, heads, d] to head-major [heads, n, d].
        let heads_major = |x: &[f32], heads: usize| {
            let mut out = vec![0.0f32; x.len()];
            for i in 0..n {
                for h in 0..heads {
                    out[(h * n + i) * hd..][..hd].copy_from_slice(&x[(i * heads + h) * hd..][..hd]);
                }
            }
            out
        };
        let (kh, vh) = (
            heads_major(&k, self.num_kv_heads),
            heads_major(&v, self.num_kv_heads),
        );
        let capacity = cache.capacity();
        let (kc, vc) = cache.append(layer, &kh, &vh, n);
        let shape = CachedAttnShape {
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: hd,
            queries: n,
            len: prefix + n,
            capacity,
        };
        let o = attention_tree(&heads_major(&q, self.num_heads), kc, vc, shape, mask);
        self.o_proj
            .forward(Tensor::from_data(TensorData::new(o, [1, n, qw]), &device))
    }
}
