//! Per-layer key/value cache for incremental decoding. Storage is preallocated to a capacity
//! and written in place, so a decode step costs one small copy per layer, not a regrowth.

use burn::prelude::*;

/// Keys and values of one layer, `[batch, kv_heads, capacity, head_dim]`.
#[derive(Debug)]
struct LayerCache<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
}

/// The cache of every layer plus the number of positions already filled.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerCache<B>>>,
    len: usize,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache able to hold `capacity` positions for `num_layers` layers.
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            capacity,
        }
    }

    /// Positions already stored (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (speculative decoding rolls back rejected tokens).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Marks `n` more positions as filled once every layer has appended them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Writes this step's keys/values for `layer` at positions `len..len+t` and returns the
    /// keys/values of positions `0..len+t`.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, t, d] = k.dims();
        let end = self.len + t;
        assert!(
            end <= self.capacity,
            "KV cache overflow: {end} positions > capacity {}",
            self.capacity
        );
        let device = k.device();
        let slot = self.layers[layer].take().unwrap_or_else(|| LayerCache {
            k: Tensor::zeros([b, h, self.capacity, d], &device),
            v: Tensor::zeros([b, h, self.capacity, d], &device),
        });
        let range = [0..b, 0..h, self.len..end, 0..d];
        let k_all = slot.k.slice_assign(range.clone(), k);
        let v_all = slot.v.slice_assign(range, v);
        let out = (
            k_all.clone().slice([0..b, 0..h, 0..end, 0..d]),
            v_all.clone().slice([0..b, 0..h, 0..end, 0..d]),
        );
        self.layers[layer] = Some(LayerCache { k: k_all, v: v_all });
        out
    }
}
