//! The model's matrices on the GPU: [`LinearBackend`] for burn-cuda. Dense weights are burn
//! tensors multiplied by burn's matmul; packed and int8 weights stay in their checkpoint
//! encoding and go through the kernels in [`super::kernels`].

use std::sync::Arc;

use burn::prelude::*;
use cubecl::cuda::CudaRuntime;
use cubecl::Runtime;

use super::kernels::{
    int8_matmul, onebit_gemv, onebit_signs, packed_dequant, packed_gemv, Int8OnGpu, PackedOnGpu,
    SignsOnGpu,
};
use super::{CudaDevice, Gpu};
use crate::model::{HostWeight, LinearBackend, Rope};
use crate::packed::onebit::OneBitLinear;
use crate::packed::onebit::LAYER_NORM_EPS;
use crate::packed::pack_quantized::storage_offset;
use crate::packed::{ActQuant, Int8Linear, PackedLinear};

/// Activation rows up to which a packed linear runs the GEMV kernel; above it the weight is
/// dequantized once per call and multiplied by burn's tiled GEMM (prefill).
pub const GEMV_MAX_ROWS: usize = 16;

/// `LMQ_GPU_FUSED=0` runs burn's generic ops instead of the fused kernels in
/// [`super::fused`] (to compare the two; the results must agree).
pub fn generic_ops() -> bool {
    static GENERIC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GENERIC.get_or_init(|| std::env::var("LMQ_GPU_FUSED").is_ok_and(|v| v == "0"))
}

/// A weight resident on the GPU.
#[derive(Debug, Clone)]
pub enum GpuWeight {
    /// `[out, in]` f32.
    Dense(Arc<Tensor<Gpu, 2>>),
    /// Packed codes read by the kernels; the host copy serves embedding-row lookups.
    Packed(Arc<PackedOnGpu>, HostWeight),
    /// W8A8 codes; the host copy serves embedding-row lookups.
    Int8(Arc<Int8OnGpu>, HostWeight),
    /// OneBit: the sign words (read by the 1-bit kernels), `b` as `[1, in]` and `a` as
    /// `[1, out]`; the host copy serves embedding-row lookups.
    OneBit(Arc<OneBitOnGpu>, HostWeight),
}

/// Whether the kernels read `p` as it is: groups must be whole packed words (any group size
/// that is a multiple of the pack factor, or one group per row) and columns in natural order.
pub fn kernel_layout_ok(p: &PackedLinear) -> bool {
    let pf = p.pack_factor();
    p.g_idx.is_none()
        && matches!(p.bits, 2 | 4 | 8)
        && (p.n_groups() == 1 || p.group_size.is_multiple_of(pf))
}

fn upload_packed(p: &PackedLinear, device: &CudaDevice) -> PackedOnGpu {
    let client = CudaRuntime::client(device);
    let pf = p.pack_factor();
    let n_groups = p.n_groups();
    let off = storage_offset(p.bits) as f32;
    let zero: Vec<f32> = match &p.zero {
        Some(z) => z.iter().map(|&z| f32::from(z) + off).collect(),
        None => vec![off; p.rows * n_groups],
    };
    let words: Vec<u32> = p.packed.iter().map(|&w| w as u32).collect();
    let words_per_group = if n_groups == 1 {
        p.words_per_row().max(1)
    } else {
        p.group_size / pf
    };
    PackedOnGpu {
        bits: u32::from(p.bits),
        rows: p.rows,
        cols: p.cols,
        wpr: p.words_per_row(),
        n_groups,
        words_per_group,
        packed: client.create_from_slice(bytemuck::cast_slice(&words)),
        scale: client.create_from_slice(bytemuck::cast_slice(&p.scale)),
        zero: client.create_from_slice(bytemuck::cast_slice(&zero)),
    }
}

/// A OneBit linear on the GPU.
#[derive(Debug)]
pub struct OneBitOnGpu {
    pub signs: SignsOnGpu,
    pub in_scale: Tensor<Gpu, 2>,
    pub out_scale: Tensor<Gpu, 2>,
    pub output_norm: bool,
}

fn upload_onebit(w: &OneBitLinear, device: &CudaDevice) -> OneBitOnGpu {
    let client = CudaRuntime::client(device);
    let row =
        |v: &[f32]| Tensor::<Gpu, 2>::from_data(TensorData::new(v.to_vec(), [1, v.len()]), device);
    OneBitOnGpu {
        signs: SignsOnGpu {
            rows: w.rows,
            cols: w.cols,
            wpr: w.words_per_row(),
            signs: client.create_from_slice(bytemuck::cast_slice(&w.signs)),
        },
        in_scale: row(&w.in_scale),
        out_scale: row(&w.out_scale),
        output_norm: w.output_norm,
    }
}

fn upload_int8(w: &Int8Linear, device: &CudaDevice) -> Int8OnGpu {
    let client = CudaRuntime::client(device);
    let wpr = w.cols.div_ceil(4);
    let mut words = vec![0u32; w.rows * wpr];
    for (r, row) in w.codes.chunks_exact(w.cols.max(1)).enumerate() {
        for (c, &q) in row.iter().enumerate() {
            words[r * wpr + c / 4] |= u32::from(q as u8) << (8 * (c % 4));
        }
    }
    Int8OnGpu {
        rows: w.rows,
        cols: w.cols,
        wpr,
        codes: client.create_from_slice(bytemuck::cast_slice(&words)),
        scale: client.create_from_slice(bytemuck::cast_slice(&w.scale)),
    }
}

fn dense(data: Vec<f32>, rows: usize, cols: usize, device: &CudaDevice) -> GpuWeight {
    GpuWeight::Dense(Arc::new(Tensor::from_data(
        TensorData::new(data, [rows, cols]),
        device,
    )))
}

impl LinearBackend for Gpu {
    type Weight = GpuWeight;
    const KV_ON_DEVICE: bool = true;

    fn upload(w: HostWeight, device: &Self::Device) -> GpuWeight {
        match w {
            HostWeight::Dense(d) => dense(d.to_row_major(), d.out_features, d.in_features, device),
            // A layout the kernels do not read (act-order g_idx, 3-bit groups that split
            // words): the scalar reference's f32 values, multiplied densely.
            HostWeight::Packed(p) if !kernel_layout_ok(&p) => {
                dense(p.dequantize_ref(), p.rows, p.cols, device)
            }
            HostWeight::Packed(p) => {
                GpuWeight::Packed(Arc::new(upload_packed(&p, device)), HostWeight::Packed(p))
            }
            // The GPU kernel quantizes activations symmetrically only: a zero-point (asymmetric)
            // W8A8 weight runs as its dequantized f32 values, weight-only, and says so once.
            HostWeight::Int8(w) if w.activations == ActQuant::Asymmetric => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "warning: W8A8 with asymmetric per-token activations has no CUDA kernel; \
                         those linears run on the GPU as dequantized f32 weights (activations \
                         not quantized)"
                    )
                });
                dense(w.dequantize_ref(), w.rows, w.cols, device)
            }
            HostWeight::Int8(w) => {
                GpuWeight::Int8(Arc::new(upload_int8(&w, device)), HostWeight::Int8(w))
            }
            HostWeight::OneBit(w) => {
                GpuWeight::OneBit(Arc::new(upload_onebit(&w, device)), HostWeight::OneBit(w))
            }
        }
    }

    fn apply_linear(x: Tensor<Self, 2>, w: &GpuWeight) -> Tensor<Self, 2> {
        let [m, k] = x.dims();
        let (_, expected) = Self::weight_dims(w);
        assert_eq!(
            k, expected,
            "linear: input has {k} features, weight expects {expected}"
        );
        match w {
            GpuWeight::Dense(w) => x.matmul(w.as_ref().clone().transpose()),
            GpuWeight::Packed(p, _) if m <= GEMV_MAX_ROWS => packed_gemv(x, p),
            GpuWeight::Packed(p, _) => {
                let wd = packed_dequant(p, &x);
                x.matmul(wd.transpose())
            }
            GpuWeight::Int8(q, _) => int8_matmul(x, q),
            GpuWeight::OneBit(w, _) => {
                let xb = x * w.in_scale.clone();
                let sums = if m <= GEMV_MAX_ROWS {
                    onebit_gemv(xb, &w.signs)
                } else {
                    let s = onebit_signs(&w.signs, &xb);
                    xb.matmul(s.transpose())
                };
                let y = sums * w.out_scale.clone();
                if w.output_norm {
                    crate::model::norm::layer_norm_no_affine(y, LAYER_NORM_EPS)
                } else {
                    y
                }
            }
        }
    }

    fn gather_rows(ids: &[u32], w: &GpuWeight, device: &Self::Device) -> Tensor<Self, 2> {
        let (rows, d) = Self::weight_dims(w);
        match w {
            GpuWeight::Dense(t) => {
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
                    panic!("token id {bad} outside the vocabulary of {rows}");
                }
                let idx: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
                let idx =
                    Tensor::<Gpu, 1, Int>::from_data(TensorData::new(idx, [ids.len()]), device);
                t.as_ref().clone().select(0, idx)
            }
            GpuWeight::Packed(_, host) | GpuWeight::Int8(_, host) | GpuWeight::OneBit(_, host) => {
                Tensor::from_data(TensorData::new(host.rows(ids), [ids.len(), d]), device)
            }
        }
    }

    fn silu_mul(gate: Tensor<Self, 3>, up: Tensor<Self, 3>) -> Tensor<Self, 3> {
        if generic_ops() {
            return burn::tensor::activation::silu(gate) * up;
        }
        super::fused::silu_mul(gate, up)
    }

    fn rms_norm(x: Tensor<Self, 3>, weight: &Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        if generic_ops() {
            return crate::model::norm::rms_norm(x, weight, eps);
        }
        super::fused::rms_norm(x, weight, eps)
    }

    fn rope_heads(
        x: Tensor<Self, 3>,
        rope: &Rope<Self>,
        heads: usize,
        start: usize,
    ) -> Tensor<Self, 4> {
        if generic_ops() {
            return rope.apply_split(x, heads, start);
        }
        let (cos, sin) = rope.tables();
        super::fused::rope_heads(x, cos, sin, heads, start)
    }

    fn decode_attention(
        q: Tensor<Self, 4>,
        k: &Tensor<Self, 4>,
        v: &Tensor<Self, 4>,
        len: usize,
    ) -> Option<Tensor<Self, 3>> {
        (!generic_ops()).then(|| super::fused::decode_attention(q, k, v, len))
    }

    fn weight_dims(w: &GpuWeight) -> (usize, usize) {
        match w {
            GpuWeight::Dense(t) => {
                let [o, i] = t.dims();
                (o, i)
            }
            GpuWeight::OneBit(w, _) => (w.signs.rows, w.signs.cols),
            GpuWeight::Packed(p, _) => (p.rows, p.cols),
            GpuWeight::Int8(q, _) => (q.rows, q.cols),
        }
    }
}
