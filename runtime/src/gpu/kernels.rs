//! cubecl kernels for the packed formats of [`crate::packed`], reading the checkpoint's words
//! directly (no f32 copy of a quantized weight is kept on the GPU):
//!
//! * [`packed_gemv`]: `y = x · Wᵀ` for a few activation rows (decode, small batches, Medusa
//!   trees). One plane (32 lanes) per output row walks the row's packed words, each lane a
//!   word at a time; the plane sums its lanes at the end.
//! * [`packed_dequant`]: the whole weight as f32 `[out, in]` for prefill, where the matmul is
//!   compute-bound and burn's tiled GEMM does the rest; the copy lives for one call.
//! * [`int8_matmul`]: W8A8 — activations quantized per token on the GPU exactly as the CPU
//!   does it (`kernels::int8::quantize_per_token`: round half to even, codes in ±127), then
//!   i32 dot products with the int8 weights, one plane per output element.
//! * [`onebit_gemv`] / [`onebit_signs`]: OneBit's sign matrix read 32 signs to a word, as a
//!   GEMV for a few rows (each sign is a multiply by ±1 of the scaled input), or as a ±1
//!   f32 matrix for burn's GEMM when many rows come (prefill).
//!
//! The arithmetic is the scalar definition's (`(q − zp) · scale` per group, summed in f32);
//! only the summation order differs, so results agree with the CPU reference within the
//! tolerances the checks in [`super::selftest`] name.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;
use cubecl::server::Handle;

/// Lanes per plane (warp) the kernels are written for.
pub const PLANE: u32 = 32;
/// Planes (output rows) per cube in the GEMV kernels.
const ROWS_PER_CUBE: u32 = 8;
/// Packed words each lane reads per step of the GEMV kernels (independent loads in flight).
const WORDS_PER_LANE: u32 = 4;
/// Output rows each plane of the shared-memory GEMV computes.
const ROWS_PER_PLANE: u32 = 2;
/// Widest input the shared-memory GEMV stages (48 KiB of f32, less the padding column).
pub const SMEM_MAX_COLS: usize = 12 * 1024 - 64;
/// Units per cube for the elementwise dequantize kernel.
const DEQUANT_CUBE: u32 = 256;

/// A packed weight as it sits on the GPU: the checkpoint's words plus per-group scales and
/// zero points (stored value of the zero, `zp + 2^(b−1)`, as f32) so the kernel subtracts
/// one number per code.
#[derive(Debug, Clone)]
pub struct PackedOnGpu {
    pub bits: u32,
    pub rows: usize,
    pub cols: usize,
    /// Words per output row.
    pub wpr: usize,
    pub n_groups: usize,
    /// Packed words per group (groups are whole words; see `super::linear`).
    pub words_per_group: usize,
    /// `[rows, wpr]` u32.
    pub packed: Handle,
    /// `[rows, n_groups]` f32.
    pub scale: Handle,
    /// `[rows, n_groups]` f32, `zp + 2^(b−1)`.
    pub zero: Handle,
}

/// An int8 W8A8 weight on the GPU: codes four to a u32 word (row-major, the row padded to
/// whole words) and one f32 scale per output row.
#[derive(Debug, Clone)]
pub struct Int8OnGpu {
    pub rows: usize,
    pub cols: usize,
    /// Words per output row, `ceil(cols / 4)`.
    pub wpr: usize,
    pub codes: Handle,
    pub scale: Handle,
}

#[cube(launch_unchecked)]
fn packed_gemv_kernel(
    x: &Array<f32>,
    packed: &Array<u32>,
    scale: &Array<f32>,
    zero: &Array<f32>,
    out: &mut Array<f32>,
    rows: usize,
    cols: usize,
    wpr: usize,
    n_groups: usize,
    words_per_group: usize,
    #[comptime] bits: u32,
) {
    let row = (CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y) as usize;
    let m = CUBE_POS_Y as usize;
    if row < rows {
        let pf = comptime!((32 / bits) as usize);
        let mask = comptime!((1u32 << bits) - 1);
        let unroll = comptime!(WORDS_PER_LANE as usize);
        let mut acc = 0.0f32;
        // Each lane takes WORDS_PER_LANE consecutive words per step, so a plane has several
        // independent loads in flight (one word per lane leaves HBM idle).
        let mut base = UNIT_POS_X as usize * unroll;
        while base < wpr {
            #[unroll]
            for j in 0..unroll {
                let w = base + j;
                if w < wpr {
                    let word = packed[row * wpr + w];
                    let g = row * n_groups + w / words_per_group;
                    let z = zero[g];
                    let c0 = w * pf;
                    let mut part = 0.0f32;
                    let mut shift = 0u32;
                    #[unroll]
                    for i in 0..pf {
                        let c = c0 + i;
                        if c < cols {
                            let q = f32::cast_from((word >> shift) & mask);
                            part += (q - z) * x[m * cols + c];
                        }
                        shift += bits;
                    }
                    acc += part * scale[g];
                }
            }
            base += PLANE_DIM as usize * unroll;
        }
        let total = plane_sum(acc);
        if UNIT_POS_X == 0 {
            out[m * rows + row] = total;
        }
    }
}

/// The decode GEMV with the activation row staged in shared memory, transposed so that
/// `xs[i][w]` is column `w·pf + i`: lanes read consecutive packed words (one 128-byte load
/// per plane per step) and the matching activations without bank conflicts. Each plane does
/// `ROWS_PER_PLANE` output rows, so one staged row serves `8 · ROWS_PER_PLANE` weight rows.
/// `wpr_pad` (words per row + 1, the padding spreading the staging writes over the banks)
/// sizes the shared memory and is compiled in; columns up to [`SMEM_MAX_COLS`].
#[cube(launch_unchecked)]
fn packed_gemv_smem_kernel(
    x: &Array<f32>,
    packed: &Array<u32>,
    scale: &Array<f32>,
    zero: &Array<f32>,
    out: &mut Array<f32>,
    rows: usize,
    cols: usize,
    wpr: usize,
    n_groups: usize,
    words_per_group: usize,
    #[comptime] bits: u32,
    #[comptime] wpr_pad: usize,
) {
    let pf = comptime!((32 / bits) as usize);
    let mask = comptime!((1u32 << bits) - 1);
    let unroll = comptime!(WORDS_PER_LANE as usize);
    let per_plane = comptime!(ROWS_PER_PLANE as usize);
    let mut xs = SharedMemory::<f32>::new(comptime!(pf * wpr_pad));
    let m = CUBE_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let tid = (UNIT_POS_Y * CUBE_DIM_X + UNIT_POS_X) as usize;
    let threads = (CUBE_DIM_X * CUBE_DIM_Y) as usize;
    let mut c = tid;
    while c < wpr * pf {
        let mut v = 0.0f32;
        if c < cols {
            v = x[m * cols + c];
        }
        xs[(c % pf) * wpr_pad + c / pf] = v;
        c += threads;
    }
    sync_cube();
    let step = PLANE_DIM as usize;
    let first = (CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y) as usize * per_plane;
    #[unroll]
    for r in 0..per_plane {
        let row = first + r;
        if row < rows {
            let mut acc = 0.0f32;
            let mut base = lane;
            while base < wpr {
                #[unroll]
                for j in 0..unroll {
                    let w = base + j * step;
                    if w < wpr {
                        let word = packed[row * wpr + w];
                        let g = row * n_groups + w / words_per_group;
                        let z = zero[g];
                        let mut part = 0.0f32;
                        let mut shift = 0u32;
                        // Padding codes are stored 0 and their staged activations 0.
                        #[unroll]
                        for i in 0..pf {
                            let q = f32::cast_from((word >> shift) & mask);
                            part += (q - z) * xs[i * wpr_pad + w];
                            shift += bits;
                        }
                        acc += part * scale[g];
                    }
                }
                base += step * unroll;
            }
            let total = plane_sum(acc);
            if lane == 0 {
                out[m * rows + row] = total;
            }
        }
    }
}

#[cube(launch_unchecked)]
fn packed_dequant_kernel(
    packed: &Array<u32>,
    scale: &Array<f32>,
    zero: &Array<f32>,
    out: &mut Array<f32>,
    rows: usize,
    cols: usize,
    wpr: usize,
    n_groups: usize,
    words_per_group: usize,
    #[comptime] bits: u32,
) {
    let idx = ABSOLUTE_POS;
    if idx < rows * wpr {
        let pf = comptime!((32 / bits) as usize);
        let mask = comptime!((1u32 << bits) - 1);
        let row = idx / wpr;
        let w = idx % wpr;
        let word = packed[idx];
        let g = row * n_groups + w / words_per_group;
        let z = zero[g];
        let s = scale[g];
        let mut shift = 0u32;
        #[unroll]
        for i in 0..pf {
            let c = w * pf + i;
            if c < cols {
                out[row * cols + c] = (f32::cast_from((word >> shift) & mask) - z) * s;
            }
            shift += bits;
        }
    }
}

/// Per-token int8 quantization of `x` `[m, cols]`: one plane per row finds the absmax,
/// then writes codes four to a word (`[m, wpr]`) and the row's scale.
#[cube(launch_unchecked)]
fn quantize_rows_kernel(
    x: &Array<f32>,
    codes: &mut Array<u32>,
    scales: &mut Array<f32>,
    cols: usize,
    wpr: usize,
) {
    let m = CUBE_POS_X as usize;
    let lane = UNIT_POS_X as usize;
    let step = PLANE_DIM as usize;
    let mut amax = 0.0f32;
    let mut c = lane;
    while c < cols {
        amax = f32::max(amax, f32::abs(x[m * cols + c]));
        c += step;
    }
    let amax = plane_max(amax);
    let mut s = 1.0f32;
    if amax > 0.0 {
        s = amax / 127.0;
    }
    let inv = 1.0f32 / s;
    let mut w = lane;
    while w < wpr {
        let mut word = 0u32;
        let mut shift = 0u32;
        #[unroll]
        for i in 0..4 {
            let c = w * 4 + i;
            if c < cols {
                let v = f32::clamp(x[m * cols + c] * inv, -127.0, 127.0);
                // Round half to even, as the CPU does (adding 1.5·2²³ leaves the integer).
                let r = (v + 12582912.0f32) - 12582912.0f32;
                let q = i32::cast_from(r);
                word |= (u32::cast_from(q) & 255u32) << shift;
            }
            shift += 8u32;
        }
        codes[m * wpr + w] = word;
        w += step;
    }
    if lane == 0 {
        scales[m] = s;
    }
}

/// Sign-extends the byte at `shift` of `word`.
#[cube]
fn byte_i32(word: u32, shift: u32) -> i32 {
    let b = i32::cast_from((word >> shift) & 255u32);
    let mut v = b;
    if b >= 128 {
        v = b - 256;
    }
    v
}

#[cube(launch_unchecked)]
fn int8_matmul_kernel(
    xq: &Array<u32>,
    xs: &Array<f32>,
    wq: &Array<u32>,
    ws: &Array<f32>,
    out: &mut Array<f32>,
    rows: usize,
    wpr: usize,
) {
    let row = (CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y) as usize;
    let m = CUBE_POS_Y as usize;
    if row < rows {
        let unroll = comptime!(WORDS_PER_LANE as usize);
        let step = PLANE_DIM as usize;
        let mut acc = 0i32;
        // Lanes read consecutive words: one 128-byte load per plane per step.
        let mut base = UNIT_POS_X as usize;
        while base < wpr {
            #[unroll]
            for j in 0..unroll {
                let w = base + j * step;
                if w < wpr {
                    let a = xq[m * wpr + w];
                    let b = wq[row * wpr + w];
                    let mut shift = 0u32;
                    #[unroll]
                    for _i in 0..4 {
                        acc += byte_i32(a, shift) * byte_i32(b, shift);
                        shift += 8u32;
                    }
                }
            }
            base += step * unroll;
        }
        let total = plane_sum(acc);
        if UNIT_POS_X == 0 {
            out[m * rows + row] = f32::cast_from(total) * (xs[m] * ws[row]);
        }
    }
}

/// A OneBit weight on the GPU: the checkpoint's sign words (bit set = −1, see
/// `crate::packed::onebit`). The value vectors are burn tensors beside it (`super::linear`).
#[derive(Debug, Clone)]
pub struct SignsOnGpu {
    pub rows: usize,
    pub cols: usize,
    /// Words per row, `ceil(cols / 32)`.
    pub wpr: usize,
    /// `[rows, wpr]` u32.
    pub signs: Handle,
}

/// `Σ_c S[row][c] · xb[m][c]` for the input already multiplied by `b`: one plane per output
/// row, lanes on consecutive words.
#[cube(launch_unchecked)]
fn onebit_gemv_kernel(
    xb: &Array<f32>,
    signs: &Array<u32>,
    out: &mut Array<f32>,
    rows: usize,
    cols: usize,
    wpr: usize,
) {
    let row = (CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y) as usize;
    let m = CUBE_POS_Y as usize;
    if row < rows {
        let step = PLANE_DIM as usize;
        let mut acc = 0.0f32;
        let mut w = UNIT_POS_X as usize;
        while w < wpr {
            let word = signs[row * wpr + w];
            let mut part = 0.0f32;
            #[unroll]
            for i in 0..32u32 {
                let c = w * 32 + i as usize;
                if c < cols {
                    // 1 − 2·bit is ±1: an exact sign flip.
                    let sign = 1.0f32 - 2.0f32 * f32::cast_from((word >> i) & 1u32);
                    part += sign * xb[m * cols + c];
                }
            }
            acc += part;
            w += step;
        }
        let total = plane_sum(acc);
        if UNIT_POS_X == 0 {
            out[m * rows + row] = total;
        }
    }
}

/// The sign matrix as ±1 f32 `[rows, cols]`, one unit per word.
#[cube(launch_unchecked)]
fn onebit_signs_kernel(
    signs: &Array<u32>,
    out: &mut Array<f32>,
    rows: usize,
    cols: usize,
    wpr: usize,
) {
    let idx = ABSOLUTE_POS;
    if idx < rows * wpr {
        let row = idx / wpr;
        let w = idx % wpr;
        let word = signs[idx];
        #[unroll]
        for i in 0..32u32 {
            let c = w * 32 + i as usize;
            if c < cols {
                out[row * cols + c] = 1.0f32 - 2.0f32 * f32::cast_from((word >> i) & 1u32);
            }
        }
    }
}

type Gpu = super::Gpu;
type GpuTensor = CubeTensor<CudaRuntime>;

fn contiguous_f32(x: burn::tensor::Tensor<Gpu, 2>) -> GpuTensor {
    let t = into_contiguous(x.into_primitive().tensor());
    assert_eq!(t.dtype, DType::F32, "f32 activations");
    t
}

fn f32_tensor(like: &GpuTensor, dims: [usize; 2]) -> GpuTensor {
    let handle = like.client.empty(dims[0] * dims[1] * 4);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::new(dims),
        handle,
        DType::F32,
    )
}

fn wrap(t: GpuTensor) -> burn::tensor::Tensor<Gpu, 2> {
    burn::tensor::Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(t))
}

/// Cubes along x for `rows` output rows, `ROWS_PER_CUBE` planes per cube.
fn row_cubes(rows: usize) -> u32 {
    rows.div_ceil(ROWS_PER_CUBE as usize) as u32
}

/// `LMQ_GPU_GEMV=simple` selects the plain GEMV (no shared memory) everywhere: the fallback
/// for inputs wider than [`SMEM_MAX_COLS`], kept selectable to compare the two.
pub fn simple_gemv() -> bool {
    static SIMPLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIMPLE.get_or_init(|| std::env::var("LMQ_GPU_GEMV").is_ok_and(|v| v == "simple"))
}

/// `x · Wᵀ` for a packed `W`: planes over output rows, one activation row per cube row.
pub fn packed_gemv(
    x: burn::tensor::Tensor<Gpu, 2>,
    w: &PackedOnGpu,
) -> burn::tensor::Tensor<Gpu, 2> {
    let [m, k] = x.dims();
    assert_eq!(k, w.cols, "packed linear: input features");
    let x = contiguous_f32(x);
    let out = f32_tensor(&x, [m, w.rows]);
    if w.cols <= SMEM_MAX_COLS && !simple_gemv() {
        let per_cube = (ROWS_PER_CUBE * ROWS_PER_PLANE) as usize;
        unsafe {
            packed_gemv_smem_kernel::launch_unchecked::<CudaRuntime>(
                &x.client,
                CubeCount::Static(w.rows.div_ceil(per_cube) as u32, m as u32, 1),
                CubeDim::new_2d(PLANE, ROWS_PER_CUBE),
                ArrayArg::from_raw_parts(x.handle.clone(), m * k),
                ArrayArg::from_raw_parts(w.packed.clone(), w.rows * w.wpr),
                ArrayArg::from_raw_parts(w.scale.clone(), w.rows * w.n_groups),
                ArrayArg::from_raw_parts(w.zero.clone(), w.rows * w.n_groups),
                ArrayArg::from_raw_parts(out.handle.clone(), m * w.rows),
                w.rows,
                w.cols,
                w.wpr,
                w.n_groups,
                w.words_per_group,
                w.bits,
                w.wpr + 1,
            );
        }
        return wrap(out);
    }
    unsafe {
        packed_gemv_kernel::launch_unchecked::<CudaRuntime>(
            &x.client,
            CubeCount::Static(row_cubes(w.rows), m as u32, 1),
            CubeDim::new_2d(PLANE, ROWS_PER_CUBE),
            ArrayArg::from_raw_parts(x.handle.clone(), m * k),
            ArrayArg::from_raw_parts(w.packed.clone(), w.rows * w.wpr),
            ArrayArg::from_raw_parts(w.scale.clone(), w.rows * w.n_groups),
            ArrayArg::from_raw_parts(w.zero.clone(), w.rows * w.n_groups),
            ArrayArg::from_raw_parts(out.handle.clone(), m * w.rows),
            w.rows,
            w.cols,
            w.wpr,
            w.n_groups,
            w.words_per_group,
            w.bits,
        );
    }
    wrap(out)
}

/// The packed weight as f32 `[rows, cols]` (the scalar reference's values).
pub fn packed_dequant(
    w: &PackedOnGpu,
    like: &burn::tensor::Tensor<Gpu, 2>,
) -> burn::tensor::Tensor<Gpu, 2> {
    let like = like.clone().into_primitive().tensor();
    let out = f32_tensor(&like, [w.rows, w.cols]);
    let units = w.rows * w.wpr;
    unsafe {
        packed_dequant_kernel::launch_unchecked::<CudaRuntime>(
            &like.client,
            CubeCount::Static(units.div_ceil(DEQUANT_CUBE as usize) as u32, 1, 1),
            CubeDim::new_1d(DEQUANT_CUBE),
            ArrayArg::from_raw_parts(w.packed.clone(), w.rows * w.wpr),
            ArrayArg::from_raw_parts(w.scale.clone(), w.rows * w.n_groups),
            ArrayArg::from_raw_parts(w.zero.clone(), w.rows * w.n_groups),
            ArrayArg::from_raw_parts(out.handle.clone(), w.rows * w.cols),
            w.rows,
            w.cols,
            w.wpr,
            w.n_groups,
            w.words_per_group,
            w.bits,
        );
    }
    wrap(out)
}

/// W8A8 `x · Wᵀ`: per-token int8 activations, i32 sums, `acc · (s_x · s_w)`.
pub fn int8_matmul(x: burn::tensor::Tensor<Gpu, 2>, w: &Int8OnGpu) -> burn::tensor::Tensor<Gpu, 2> {
    let [m, k] = x.dims();
    assert_eq!(k, w.cols, "int8 linear: input features");
    let x = contiguous_f32(x);
    let client = x.client.clone();
    let xq = client.empty(m * w.wpr * 4);
    let xs = client.empty(m * 4);
    unsafe {
        quantize_rows_kernel::launch_unchecked::<CudaRuntime>(
            &client,
            CubeCount::Static(m as u32, 1, 1),
            CubeDim::new_1d(PLANE),
            ArrayArg::from_raw_parts(x.handle.clone(), m * k),
            ArrayArg::from_raw_parts(xq.clone(), m * w.wpr),
            ArrayArg::from_raw_parts(xs.clone(), m),
            k,
            w.wpr,
        );
    }
    let out = f32_tensor(&x, [m, w.rows]);
    unsafe {
        int8_matmul_kernel::launch_unchecked::<CudaRuntime>(
            &client,
            CubeCount::Static(row_cubes(w.rows), m as u32, 1),
            CubeDim::new_2d(PLANE, ROWS_PER_CUBE),
            ArrayArg::from_raw_parts(xq, m * w.wpr),
            ArrayArg::from_raw_parts(xs, m),
            ArrayArg::from_raw_parts(w.codes.clone(), w.rows * w.wpr),
            ArrayArg::from_raw_parts(w.scale.clone(), w.rows),
            ArrayArg::from_raw_parts(out.handle.clone(), m * w.rows),
            w.rows,
            w.wpr,
        );
    }
    wrap(out)
}

/// OneBit's sign sums `xb · Sᵀ` (`xb` = the input times `b`) for a few rows.
pub fn onebit_gemv(
    xb: burn::tensor::Tensor<Gpu, 2>,
    w: &SignsOnGpu,
) -> burn::tensor::Tensor<Gpu, 2> {
    let [m, k] = xb.dims();
    assert_eq!(k, w.cols, "onebit linear: input features");
    let x = contiguous_f32(xb);
    let out = f32_tensor(&x, [m, w.rows]);
    unsafe {
        onebit_gemv_kernel::launch_unchecked::<CudaRuntime>(
            &x.client,
            CubeCount::Static(row_cubes(w.rows), m as u32, 1),
            CubeDim::new_2d(PLANE, ROWS_PER_CUBE),
            ArrayArg::from_raw_parts(x.handle.clone(), m * k),
            ArrayArg::from_raw_parts(w.signs.clone(), w.rows * w.wpr),
            ArrayArg::from_raw_parts(out.handle.clone(), m * w.rows),
            w.rows,
            w.cols,
            w.wpr,
        );
    }
    wrap(out)
}

/// OneBit's sign matrix as ±1 f32 `[rows, cols]`, for a GEMM; the copy lives for one call.
pub fn onebit_signs(
    w: &SignsOnGpu,
    like: &burn::tensor::Tensor<Gpu, 2>,
) -> burn::tensor::Tensor<Gpu, 2> {
    let like = like.clone().into_primitive().tensor();
    let out = f32_tensor(&like, [w.rows, w.cols]);
    let units = w.rows * w.wpr;
    unsafe {
        onebit_signs_kernel::launch_unchecked::<CudaRuntime>(
            &like.client,
            CubeCount::Static(units.div_ceil(DEQUANT_CUBE as usize) as u32, 1, 1),
            CubeDim::new_1d(DEQUANT_CUBE),
            ArrayArg::from_raw_parts(w.signs.clone(), units),
            ArrayArg::from_raw_parts(out.handle.clone(), w.rows * w.cols),
            w.rows,
            w.cols,
            w.wpr,
        );
    }
    wrap(out)
}
