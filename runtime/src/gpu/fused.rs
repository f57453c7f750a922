//! The per-token ops a decode step runs between its matrices, each one cubecl kernel instead
//! of burn's chain of elementwise kernels (a SmolLM2 decode step is launch-bound: about fifty
//! small kernels per layer through burn's generic ops). Same arithmetic as the generic ops
//! (`model::norm::rms_norm`, `Rope::apply`, softmax attention), summed in another order;
//! `gpu-check` compares the model's perplexity and greedy tokens with the CPU's.

use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;

use super::kernels::PLANE;
use super::Gpu;

type GpuTensor = CubeTensor<CudaRuntime>;

/// `x / sqrt(mean(x²) + eps) · w` over rows of `d`, one plane per row.
#[cube(launch_unchecked)]
fn rms_norm_kernel(x: &Array<f32>, w: &Array<f32>, out: &mut Array<f32>, d: usize, eps: f32) {
    let row = CUBE_POS_X as usize;
    let lane = UNIT_POS_X as usize;
    let step = PLANE_DIM as usize;
    let mut ss = 0.0f32;
    let mut c = lane;
    while c < d {
        let v = x[row * d + c];
        ss += v * v;
        c += step;
    }
    let total = plane_sum(ss);
    let inv = 1.0f32 / f32::sqrt(total / f32::cast_from(d) + eps);
    let mut c = lane;
    while c < d {
        out[row * d + c] = x[row * d + c] * inv * w[c];
        c += step;
    }
}

/// `silu(g) · u` elementwise: `g / (1 + e^(−g)) · u`.
#[cube(launch_unchecked)]
fn silu_mul_kernel(g: &Array<f32>, u: &Array<f32>, out: &mut Array<f32>, n: usize) {
    let i = ABSOLUTE_POS;
    if i < n {
        let x = g[i];
        out[i] = x / (1.0f32 + f32::exp(-x)) * u[i];
    }
}

/// Rotary embedding of `[batch·t, heads, hd]` rows (token `i` of each sequence at position
/// `start + i`), one unit per rotated pair `(j, j + hd/2)`.
#[cube(launch_unchecked)]
fn rope_kernel(
    x: &Array<f32>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    out: &mut Array<f32>,
    tokens: usize,
    t: usize,
    heads: usize,
    hd: usize,
    start: usize,
) {
    let half = hd / 2;
    let idx = ABSOLUTE_POS;
    if idx < tokens * heads * half {
        let j = idx % half;
        let th = idx / half;
        let tok = th / heads;
        let base = th * hd;
        let p = (start + tok % t) * hd;
        let a = x[base + j];
        let b = x[base + j + half];
        out[base + j] = a * cos[p + j] + (-b) * sin[p + j];
        out[base + j + half] = b * cos[p + j + half] + a * sin[p + j + half];
    }
}

/// Softmax attention of one query per head over positions `0..len` of a layer's cache
/// (`[kv_heads, capacity, hd]`), one plane per head: scores into `scratch`, the max and the
/// sum across the plane, then each lane accumulates its output dimensions over positions.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn decode_attention_kernel(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    scratch: &mut Array<f32>,
    out: &mut Array<f32>,
    len: usize,
    capacity: usize,
    hd: usize,
    rep: usize,
    scale: f32,
) {
    let h = CUBE_POS_X as usize;
    let lane = UNIT_POS_X as usize;
    let step = PLANE_DIM as usize;
    let kvh = h / rep;
    let kbase = kvh * capacity * hd;
    let qbase = h * hd;
    let sbase = h * len;
    let mut local_max = f32::new(-3.0e38);
    let mut j = lane;
    while j < len {
        let mut s = 0.0f32;
        for d in 0..hd {
            s += q[qbase + d] * k[kbase + j * hd + d];
        }
        s *= scale;
        scratch[sbase + j] = s;
        local_max = f32::max(local_max, s);
        j += step;
    }
    let m = plane_max(local_max);
    let mut local_sum = 0.0f32;
    let mut j = lane;
    while j < len {
        let e = f32::exp(scratch[sbase + j] - m);
        scratch[sbase + j] = e;
        local_sum += e;
        j += step;
    }
    let l = plane_sum(local_sum);
    // The plane's lanes wrote different scores: make them visible before reading them all.
    sync_plane();
    let mut d = lane;
    while d < hd {
        let mut acc = 0.0f32;
        for j in 0..len {
            acc += scratch[sbase + j] * v[kbase + j * hd + d];
        }
        out[qbase + d] = acc / l;
        d += step;
    }
}

fn primitive(t: Tensor<Gpu, 2>) -> GpuTensor {
    let t = into_contiguous(t.into_primitive().tensor());
    assert_eq!(t.dtype, DType::F32, "f32 activations");
    t
}

fn empty_like(like: &GpuTensor, shape: Vec<usize>) -> GpuTensor {
    let n: usize = shape.iter().product();
    let handle = like.client.empty(n * 4);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        handle,
        DType::F32,
    )
}

fn wrap<const D: usize>(t: GpuTensor) -> Tensor<Gpu, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Fused RMSNorm of `[b, t, d]`.
pub fn rms_norm(x: Tensor<Gpu, 3>, weight: &Tensor<Gpu, 1>, eps: f64) -> Tensor<Gpu, 3> {
    let [b, t, d] = x.dims();
    let x = primitive(x.reshape([b * t, d]));
    let w = into_contiguous(weight.clone().into_primitive().tensor());
    let out = empty_like(&x, vec![b, t, d]);
    unsafe {
        rms_norm_kernel::launch_unchecked::<CudaRuntime>(
            &x.client,
            CubeCount::Static((b * t) as u32, 1, 1),
            CubeDim::new_1d(PLANE),
            ArrayArg::from_raw_parts(x.handle.clone(), b * t * d),
            ArrayArg::from_raw_parts(w.handle.clone(), d),
            ArrayArg::from_raw_parts(out.handle.clone(), b * t * d),
            d,
            eps as f32,
        );
    }
    wrap(out)
}

/// Fused `silu(gate) · up` of two `[b, t, f]` tensors.
pub fn silu_mul(gate: Tensor<Gpu, 3>, up: Tensor<Gpu, 3>) -> Tensor<Gpu, 3> {
    let [b, t, f] = gate.dims();
    let g = primitive(gate.reshape([b * t, f]));
    let u = primitive(up.reshape([b * t, f]));
    let n = b * t * f;
    let out = empty_like(&g, vec![b, t, f]);
    unsafe {
        silu_mul_kernel::launch_unchecked::<CudaRuntime>(
            &g.client,
            CubeCount::Static(n.div_ceil(256) as u32, 1, 1),
            CubeDim::new_1d(256),
            ArrayArg::from_raw_parts(g.handle.clone(), n),
            ArrayArg::from_raw_parts(u.handle.clone(), n),
            ArrayArg::from_raw_parts(out.handle.clone(), n),
            n,
        );
    }
    wrap(out)
}

/// Fused rotary embedding of `[b, t, heads·hd]`, returned as heads `[b, heads, t, hd]`.
pub fn rope_heads(
    x: Tensor<Gpu, 3>,
    cos: &Tensor<Gpu, 2>,
    sin: &Tensor<Gpu, 2>,
    heads: usize,
    start: usize,
) -> Tensor<Gpu, 4> {
    let [b, t, w] = x.dims();
    let hd = w / heads;
    let x = primitive(x.reshape([b * t, w]));
    let (cos, sin) = (
        into_contiguous(cos.clone().into_primitive().tensor()),
        into_contiguous(sin.clone().into_primitive().tensor()),
    );
    let table = cos.meta.shape().num_elements();
    let out = empty_like(&x, vec![b, t, heads, hd]);
    let units = b * t * heads * hd / 2;
    unsafe {
        rope_kernel::launch_unchecked::<CudaRuntime>(
            &x.client,
            CubeCount::Static(units.div_ceil(256) as u32, 1, 1),
            CubeDim::new_1d(256),
            ArrayArg::from_raw_parts(x.handle.clone(), b * t * w),
            ArrayArg::from_raw_parts(cos.handle.clone(), table),
            ArrayArg::from_raw_parts(sin.handle.clone(), table),
            ArrayArg::from_raw_parts(out.handle.clone(), b * t * w),
            b * t,
            t,
            heads,
            hd,
            start,
        );
    }
    wrap::<4>(out).swap_dims(1, 2)
}

/// Fused decode attention (see [`decode_attention_kernel`]); `k`, `v` are whole cache buffers.
pub fn decode_attention(
    q: Tensor<Gpu, 4>,
    k: &Tensor<Gpu, 4>,
    v: &Tensor<Gpu, 4>,
    len: usize,
) -> Tensor<Gpu, 3> {
    let [_, heads, _, hd] = q.dims();
    let [_, kv_heads, capacity, _] = k.dims();
    let q = primitive(q.reshape([heads, hd]));
    let k = into_contiguous(k.clone().into_primitive().tensor());
    let v = into_contiguous(v.clone().into_primitive().tensor());
    let scratch = q.client.empty(heads * len * 4);
    let out = empty_like(&q, vec![1, 1, heads * hd]);
    unsafe {
        decode_attention_kernel::launch_unchecked::<CudaRuntime>(
            &q.client,
            CubeCount::Static(heads as u32, 1, 1),
            CubeDim::new_1d(PLANE),
            ArrayArg::from_raw_parts(q.handle.clone(), heads * hd),
            ArrayArg::from_raw_parts(k.handle.clone(), kv_heads * capacity * hd),
            ArrayArg::from_raw_parts(v.handle.clone(), kv_heads * capacity * hd),
            ArrayArg::from_raw_parts(scratch, heads * len),
            ArrayArg::from_raw_parts(out.handle.clone(), heads * hd),
            len,
            capacity,
            hd,
            heads / kv_heads,
            1.0 / (hd as f32).sqrt(),
        );
    }
    wrap(out)
}
