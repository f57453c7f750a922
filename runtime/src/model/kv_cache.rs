//! Per-layer key/value cache for incremental decoding, kept in host memory in the layout
//! `[kv_heads, capacity, head_dim]`: appending writes only the new rows, and the cached
//! attention kernel reads keys in place (no per-token copy of the whole cache). Storage grows
//! by doubling up to a maximum, so a server can promise a long generation without allocating
//! it up front.

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
        }
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
    /// moved to `start, start + 1, …`: the accepted path of a verified Medusa tree.
    pub fn keep_rows(&mut self, start: usize, rows: &[usize]) {
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
