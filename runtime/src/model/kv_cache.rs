//! Per-layer key/value cache for incremental decoding, kept in host memory in the layout
//! `[kv_heads, capacity, head_dim]`: appending writes only the new rows, and the cached
//! attention kernel reads keys in place (no per-token copy of the whole cache). Storage grows
//! by doubling up to a maximum, so a server can promise a long generation without allocating
//! it up front.
//!
//! A cache made with [`KvCache::on_device`] keeps the keys and values as backend tensors
//! instead (`[1, kv_heads, capacity, head_dim]` per layer), so a GPU decode step moves only
//! the new token and its logits across the bus. It serves `Llama::forward` (prefill, decode,
//! speculative verification, `truncate`), batched decoding and Medusa trees (`keep_rows`).

use std::any::Any;
use std::sync::Arc;

use burn::prelude::*;

/// Keys and values of one layer.
#[derive(Debug, Clone)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The cache of every layer plus the number of positions already filled.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    capacity: usize,
    max_capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Per layer, an `Arc<DeviceKv<B>>` when the cache lives on the backend.
    device: Option<Vec<Option<Arc<dyn Any + Send + Sync>>>>,
}

/// One layer's keys and values as backend tensors `[1, kv_heads, capacity, head_dim]`.
struct DeviceKv<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
}

impl KvCache {
    /// An empty cache able to hold `capacity` positions.
    pub fn new(num_layers: usize, capacity: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self::growable(num_layers, capacity, capacity, kv_heads, head_dim)
    }

    /// An empty cache that starts with room for `initial` positions and grows (doubling) up
    /// to `max_capacity` when [`KvCache::reserve`] asks for more.
    pub fn growable(
        num_layers: usize,
        initial: usize,
        max_capacity: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            capacity: initial.min(max_capacity),
            max_capacity,
            kv_heads,
            head_dim,
            device: None,
        }
    }

    /// The same cache with its keys and values kept as backend tensors (see the module docs).
    pub fn on_device(mut self) -> Self {
        self.device = Some(vec![None; self.layers.len()]);
        self
    }

    /// Whether keys and values live on the backend.
    pub fn is_on_device(&self) -> bool {
        self.device.is_some()
    }

    /// Writes `k`, `v` (`[1, kv_heads, t, head_dim]`) for `layer` after the `len` stored
    /// positions and returns the layer's whole key and value buffers
    /// (`[1, kv_heads, capacity, head_dim]`, positions `0..len + t` filled).
    pub(crate) fn append_device<B: Backend>(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [_, h, t, d] = k.dims();
        let (start, cap) = (self.len, self.capacity);
        assert!(
            start + t <= cap,
            "KV cache overflow: {} positions > capacity {cap}",
            start + t
        );
        let slots = self.device.as_mut().expect("a device cache");
        let taken = slots[layer].take().map(|a| {
            let kv = a.downcast::<DeviceKv<B>>().unwrap_or_else(|_| {
                panic!("KV cache layer {layer} holds another backend's tensors")
            });
            // Sole owner: update in place; shared with a clone: copy on write.
            Arc::try_unwrap(kv).unwrap_or_else(|shared| DeviceKv {
                k: shared.k.clone(),
                v: shared.v.clone(),
            })
        });
        let device = k.device();
        let mut kv = match taken {
            Some(kv) if kv.k.dims()[2] >= cap => kv,
            old => {
                let mut grown = DeviceKv {
                    k: Tensor::zeros([1, h, cap, d], &device),
                    v: Tensor::zeros([1, h, cap, d], &device),
                };
                if let Some(old) = old {
                    if start > 0 {
                        let rows = [0..1, 0..h, 0..start, 0..d];
                        grown.k = grown
                            .k
                            .slice_assign(rows.clone(), old.k.slice(rows.clone()));
                        grown.v = grown.v.slice_assign(rows.clone(), old.v.slice(rows));
                    }
                }
                grown
            }
        };
        let new_rows = [0..1, 0..h, start..start + t, 0..d];
        kv.k = kv.k.slice_assign(new_rows.clone(), k);
        kv.v = kv.v.slice_assign(new_rows, v);
        let out = (kv.k.clone(), kv.v.clone());
        slots[layer] = Some(Arc::new(kv));
        out
    }

    /// Makes room for `positions` in total (a no-op when there is room already); storage
    /// is re-laid out per head. Panics beyond the maximum capacity, like an overflow.
    pub fn reserve(&mut self, positions: usize) {
        if positions <= self.capacity {
            return;
        }
        assert!(
            positions <= self.max_capacity,
            "KV cache overflow: {positions} positions > capacity {}",
            self.max_capacity
        );
        let new_cap = (self.capacity * 2).max(positions).min(self.max_capacity);
        let (h, d, old) = (self.kv_heads, self.head_dim, self.capacity);
        for slot in self.layers.iter_mut().flatten() {
            for buf in [&mut slot.k, &mut slot.v] {
                let mut grown = vec![0.0f32; h * new_cap * d];
                for head in 0..h {
                    grown[head * new_cap * d..][..self.len * d]
                        .copy_from_slice(&buf[head * old * d..][..self.len * d]);
                }
                *buf = grown;
            }
        }
        self.capacity = new_cap;
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

    /// Keeps, of the positions from `start` on, only `rows` (offsets from `start`, increasing),
    /// moved to `start, start + 1, …`: the accepted path of a verified Medusa tree. `B` is
    /// the backend whose tensors a device cache holds.
    pub fn keep_rows<B: Backend>(&mut self, start: usize, rows: &[usize]) {
        if let Some(slots) = self.device.as_mut() {
            for slot in slots.iter_mut() {
                if let Some(any) = slot.take() {
                    let kv = any
                        .downcast::<DeviceKv<B>>()
                        .unwrap_or_else(|_| panic!("KV cache holds another backend's tensors"));
                    let [_, h, _, d] = kv.k.dims();
                    let idx: Vec<i32> = rows.iter().map(|&r| (start + r) as i32).collect();
                    let idx = Tensor::<B, 1, Int>::from_data(
                        TensorData::new(idx, [rows.len()]),
                        &kv.k.device(),
                    );
                    let dst = [0..1, 0..h, start..start + rows.len(), 0..d];
                    let k = kv.k.clone().select(2, idx.clone());
                    let v = kv.v.clone().select(2, idx);
                    *slot = Some(Arc::new(DeviceKv {
                        k: kv.k.clone().slice_assign(dst.clone(), k),
                        v: kv.v.clone().slice_assign(dst, v),
                    }));
                }
            }
            self.len = start + rows.len();
            return;
        }
        let (h, d, cap) = (self.kv_heads, self.head_dim, self.capacity);
        for slot in self.layers.iter_mut().flatten() {
            for buf in [&mut slot.k, &mut slot.v] {
                for head in 0..h {
                    for (i, &r) in rows.iter().enumerate() {
                        let (src, dst) =
                            ((head * cap + start + r) * d, (head * cap + start + i) * d);
                        buf.copy_within(src..src + d, dst);
                    }
                }
            }
        }
        self.len = start + rows.len();
    }

    /// Marks `n` more positions as filled once every layer has appended them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Writes `t` new positions (`k`, `v` as `[kv_heads, t, head_dim]`) for `layer` after the
    /// `len` stored ones, and returns the layer's full key and value storage.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &[f32],
        v: &[f32],
        t: usize,
    ) -> (&[f32], &[f32]) {
        let (h, d, cap, start) = (self.kv_heads, self.head_dim, self.capacity, self.len);
        assert!(
            start + t <= cap,
            "KV cache overflow: {} positions > capacity {cap}",
            start + t
        );
        assert_eq!(k.len(), h * t * d, "key shape");
        let slot = self.layers[layer].get_or_insert_with(|| LayerKv {
            k: vec![0.0; h * cap * d],
            v: vec![0.0; h * cap * d],
        });
        for head in 0..h {
            let src = head * t * d..(head + 1) * t * d;
            let dst = (head * cap + start) * d..(head * cap + start + t) * d;
            slot.k[dst.clone()].copy_from_slice(&k[src.clone()]);
            slot.v[dst].copy_from_slice(&v[src]);
        }
        (&slot.k, &slot.v)
    }
}
