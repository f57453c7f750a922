//! Linear layers through a narrow backend extension: the runtime owns the weights (f32 rows
//! in the checkpoint's `[out, in]` layout now, packed quantized formats next) and each backend
//! supplies the kernels. burn's generic matmul runs decode-sized GEMVs on one core; the CPU
//! kernels here stream weights on all of them.

use std::fmt::Debug;
use std::sync::Arc;

use burn::backend::Flex;
use burn::prelude::*;

use crate::kernels::int8::matmul_i8_nt;
use crate::kernels::onebit::matmul_onebit_nt;
use crate::kernels::packed_q::matmul_packed_nt;
use crate::kernels::packed_vnni::{gemv_packed_vnni_many, runtime_act_codes};
use crate::kernels::{matmul_panel_nt, PanelF32};
use crate::packed::{Int8Linear, OneBitLinear, PackedLinear};

use super::host_step::RowLayout;
use super::kv_cache::KvCache;
use super::llama::Llama;
use super::rope::Rope;

/// A weight matrix as loaded: `out_features` rows of `in_features` f32 values, held in
/// panel layout ([`PanelF32`]) so that decode GEMVs stream each block of rows in order.
#[derive(Debug, Clone)]
pub struct DenseWeight {
    pub panels: Arc<PanelF32>,
    pub out_features: usize,
    pub in_features: usize,
}

impl DenseWeight {
    /// Packs `[out, in]` row-major data.
    pub fn new(data: Vec<f32>, out_features: usize, in_features: usize) -> Self {
        assert_eq!(data.len(), out_features * in_features, "weight shape");
        Self {
            panels: Arc::new(PanelF32::from_row_major(&data, out_features, in_features)),
            out_features,
            in_features,
        }
    }

    /// The checkpoint's `[out, in]` row-major layout (a copy).
    pub fn to_row_major(&self) -> Vec<f32> {
        self.panels.to_row_major()
    }
}

/// A weight as the runtime holds it on the host: f32 rows, a packed quantized matrix
/// (compressed-tensors `pack-quantized`) that stays packed in memory and is dequantized
/// inside the matmul kernel, or an int8 matrix (`int-quantized` W8A8) whose inputs are
/// quantized per token and multiplied in integers.
#[derive(Debug, Clone)]
pub enum HostWeight {
    Dense(DenseWeight),
    Packed(Arc<PackedLinear>),
    Int8(Arc<Int8Linear>),
    /// OneBit: packed signs and two value vectors (and the output norm the layer applies).
    OneBit(Arc<OneBitLinear>),
}

impl HostWeight {
    /// `(out_features, in_features)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            HostWeight::Dense(w) => (w.out_features, w.in_features),
            HostWeight::Packed(p) => (p.rows, p.cols),
            HostWeight::Int8(w) => (w.rows, w.cols),
            HostWeight::OneBit(w) => (w.rows, w.cols),
        }
    }

    /// Rows `ids` as f32 `[ids.len(), in_features]` (embedding lookups), dequantized by the
    /// format's own row decoder. Panics on an id outside the matrix.
    pub fn rows(&self, ids: &[u32]) -> Vec<f32> {
        let (rows, d) = self.dims();
        let mut out = vec![0.0f32; ids.len() * d];
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(d)) {
            let id = id as usize;
            assert!(id < rows, "token id {id} outside the vocabulary of {rows}");
            match self {
                HostWeight::Dense(w) => w.panels.row_into(id, dst),
                HostWeight::Packed(p) => p.dequantize_rows_into(id, dst),
                HostWeight::Int8(w) => w.dequantize_rows_into(id, dst),
                HostWeight::OneBit(w) => w.dequantize_rows_into(id, dst),
            }
        }
        out
    }
}

/// What a backend must provide to run the model: its matrices, plus the per-token ops a GPU
/// backend fuses into one kernel each (defaults: burn's generic ops, what the CPU runs).
pub trait LinearBackend: Backend {
    /// The backend's resident form of a weight (host rows on CPU).
    type Weight: Clone + Debug + Send + Sync;
    /// Moves a loaded weight to where this backend computes.
    fn upload(w: HostWeight, device: &Self::Device) -> Self::Weight;
    /// `x · Wᵀ` for `x` of shape `[rows, in]`.
    fn apply_linear(x: Tensor<Self, 2>, w: &Self::Weight) -> Tensor<Self, 2>;
    /// Rows `ids` of `W` (embedding lookup, sharing a tied lm_head's storage).
    fn gather_rows(ids: &[u32], w: &Self::Weight, device: &Self::Device) -> Tensor<Self, 2>;
    /// `(out_features, in_features)` of a resident weight.
    fn weight_dims(w: &Self::Weight) -> (usize, usize);
    /// Whether `Llama::new_cache` keeps keys and values as this backend's tensors (a GPU:
    /// no per-token trips to the host) rather than in host memory beside the CPU kernels.
    const KV_ON_DEVICE: bool = false;

    /// The gated MLP's `silu(gate) · up`.
    fn silu_mul(gate: Tensor<Self, 3>, up: Tensor<Self, 3>) -> Tensor<Self, 3> {
        burn::tensor::activation::silu(gate) * up
    }

    /// RMSNorm over the last dimension.
    fn rms_norm(x: Tensor<Self, 3>, weight: &Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        super::norm::rms_norm(x, weight, eps)
    }

    /// Splits `[b, t, heads·hd]` into heads `[b, heads, t, hd]` rotated for positions
    /// `start..start + t`.
    fn rope_heads(
        x: Tensor<Self, 3>,
        rope: &Rope<Self>,
        heads: usize,
        start: usize,
    ) -> Tensor<Self, 4> {
        rope.apply_split(x, heads, start)
    }

    /// Last-position logits of `tokens` continuing a host `cache` (a decode step or a
    /// prompt), when the backend has a fused form of the forward pass (the CPU: no per-op
    /// dispatch, no tensor copies); `None` leaves it to the generic layer-by-layer path.
    fn forward_last_fused(
        _model: &Llama<Self>,
        _tokens: &[u32],
        _cache: &mut KvCache,
    ) -> Option<Vec<f32>> {
        None
    }

    /// Final hidden states `[t, hidden]` (after the output norm) of every row of `tokens`
    /// continuing a host `cache` as `layout` (a chain, or a Medusa tree): speculative
    /// verification's pass, fused where the backend can; `None` leaves it to the generic path.
    fn forward_rows_fused(
        _model: &Llama<Self>,
        _tokens: &[u32],
        _layout: RowLayout,
        _cache: &mut KvCache,
    ) -> Option<Vec<f32>> {
        None
    }

    /// Final hidden states `[n, hidden]` (after the output norm) for one new token of each
    /// of `n` sequences, each continuing its own host cache (continuous batching), fused
    /// where the backend can; `None` leaves it to the generic path.
    fn forward_decode_batch_fused(
        _model: &Llama<Self>,
        _tokens: &[u32],
        _caches: &mut [&mut KvCache],
    ) -> Option<Vec<f32>> {
        None
    }

    /// One query per head (`q`: `[1, heads, 1, hd]`) over positions `0..len` of a layer's
    /// device cache (`k`, `v`: `[1, kv_heads, capacity, hd]`), as `[1, 1, heads·hd]`; `None`
    /// leaves it to burn's attention.
    fn decode_attention(
        _q: Tensor<Self, 4>,
        _k: &Tensor<Self, 4>,
        _v: &Tensor<Self, 4>,
        _len: usize,
    ) -> Option<Tensor<Self, 3>> {
        None
    }
}

impl LinearBackend for Flex {
    type Weight = HostWeight;

    fn upload(w: HostWeight, _device: &Self::Device) -> Self::Weight {
        w
    }

    fn apply_linear(x: Tensor<Self, 2>, w: &HostWeight) -> Tensor<Self, 2> {
        let [m, k] = x.dims();
        let (n, expected) = w.dims();
        assert_eq!(
            k, expected,
            "linear: input has {k} features, weight expects {expected}"
        );
        let device = x.device();
        let xs = x.into_data().into_vec::<f32>().expect("f32 activations");
        let y = host_matmul(&xs, w, m);
        Tensor::from_data(TensorData::new(y, [m, n]), &device)
    }

    fn forward_last_fused(
        model: &Llama<Self>,
        tokens: &[u32],
        cache: &mut KvCache,
    ) -> Option<Vec<f32>> {
        Some(super::host_step::forward_last(model, tokens, cache))
    }

    fn forward_rows_fused(
        model: &Llama<Self>,
        tokens: &[u32],
        layout: RowLayout,
        cache: &mut KvCache,
    ) -> Option<Vec<f32>> {
        Some(super::host_step::forward_rows(model, tokens, layout, cache))
    }

    fn forward_decode_batch_fused(
        model: &Llama<Self>,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Option<Vec<f32>> {
        Some(super::host_step::forward_decode_batch(
            model, tokens, caches,
        ))
    }

    fn gather_rows(ids: &[u32], w: &HostWeight, device: &Self::Device) -> Tensor<Self, 2> {
        let d = w.dims().1;
        Tensor::from_data(TensorData::new(w.rows(ids), [ids.len(), d]), device)
    }

    fn weight_dims(w: &HostWeight) -> (usize, usize) {
        w.dims()
    }
}

/// `x · Wᵀ` on the host for `x` `[m, in]` (row-major), through the weight format's kernel.
pub fn host_matmul(x: &[f32], w: &HostWeight, m: usize) -> Vec<f32> {
    match w {
        HostWeight::Dense(d) => matmul_panel_nt(x, &d.panels, m),
        HostWeight::Packed(p) => matmul_packed_nt(x, p, m),
        HostWeight::Int8(w) => matmul_i8_nt(x, w, m),
        HostWeight::OneBit(w) => matmul_onebit_nt(x, w, m),
    }
}

/// `x · Wᵢᵀ` for weights that read the same input `x` (q/k/v, gate/up): packed weights the
/// VNNI GEMV takes go through one call (activations coded once, one thread-team loop), with
/// the same results as [`host_matmul`] on each; anything else is multiplied one by one.
pub fn host_matmul_many(x: &[f32], ws: &[&HostWeight], m: usize) -> Vec<Vec<f32>> {
    let packed: Option<Vec<&PackedLinear>> = ws
        .iter()
        .map(|w| match w {
            HostWeight::Packed(p) => Some(&**p),
            _ => None,
        })
        .collect();
    packed
        .and_then(|ps| gemv_packed_vnni_many(x, &ps, m, runtime_act_codes()))
        .unwrap_or_else(|| ws.iter().map(|w| host_matmul(x, w, m)).collect())
}

/// `y = x · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear<B: LinearBackend> {
    pub weight: B::Weight,
    /// `[out]`
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: LinearBackend> Linear<B> {
    /// Input features.
    pub fn in_features(&self) -> usize {
        B::weight_dims(&self.weight).1
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        B::weight_dims(&self.weight).0
    }

    /// Applies the layer to `[batch, tokens, in]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, i] = x.dims();
        let y = B::apply_linear(x.reshape([b * t, i]), &self.weight).reshape([
            b,
            t,
            self.out_features(),
        ]);
        match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<3>(),
            None => y,
        }
    }
}
