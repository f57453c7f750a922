//! Dequantizers from ggml block formats to `f32`.
//!
//! Every block format is a `#[repr(C)]`, alignment-1 [`bytemuck::Pod`] struct whose size is
//! asserted at compile time against ggml-common.h, so a byte slice from the memory map can be
//! viewed as blocks without copying. Multi-byte scalars are kept as little-endian byte arrays
//! (the file may place a block at any address). Decoding follows ggml's `dequantize_row_*`
//! element order exactly; tensors are decoded in parallel over chunks of blocks.

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};
use rayon::prelude::*;

use super::types::{GgmlType, QK_K};
use super::GgufError;

/// A little-endian IEEE half stored unaligned.
#[repr(transparent)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct F16Le([u8; 2]);

impl F16Le {
    fn get(self) -> f32 {
        f16::from_le_bytes(self.0).to_f32()
    }
}

/// A little-endian bfloat16 stored unaligned.
#[repr(transparent)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Bf16Le([u8; 2]);

/// A little-endian `f32` stored unaligned.
#[repr(transparent)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct F32Le([u8; 4]);

/// One fixed-size ggml block and how to decode it.
trait Block: Pod + Send + Sync {
    /// Elements decoded from one block.
    const ELEMS: usize;
    /// Writes the block's `ELEMS` values, in ggml order, to `out` (exactly `ELEMS` long).
    fn decode(&self, out: &mut [f32]);
}

impl Block for F32Le {
    const ELEMS: usize = 1;
    fn decode(&self, out: &mut [f32]) {
        out[0] = f32::from_le_bytes(self.0);
    }
}

impl Block for F16Le {
    const ELEMS: usize = 1;
    fn decode(&self, out: &mut [f32]) {
        out[0] = self.get();
    }
}

impl Block for Bf16Le {
    const ELEMS: usize = 1;
    fn decode(&self, out: &mut [f32]) {
        out[0] = bf16::from_le_bytes(self.0).to_f32();
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy 32-element blocks. In the 4/5-bit formats byte j holds element j in its low nibble
// and element j + 16 in its high nibble.
// ---------------------------------------------------------------------------------------------

/// `block_q4_0`: x = d * (q - 8).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ4_0 {
    d: F16Le,
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl Block for BlockQ4_0 {
    const ELEMS: usize = 32;
    fn decode(&self, out: &mut [f32]) {
        let d = self.d.get();
        let (lo, hi) = out.split_at_mut(16);
        for (j, &q) in self.qs.iter().enumerate() {
            lo[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// `block_q4_1`: x = d * q + m.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ4_1 {
    d: F16Le,
    m: F16Le,
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

impl Block for BlockQ4_1 {
    const ELEMS: usize = 32;
    fn decode(&self, out: &mut [f32]) {
        let (d, m) = (self.d.get(), self.m.get());
        let (lo, hi) = out.split_at_mut(16);
        for (j, &q) in self.qs.iter().enumerate() {
            lo[j] = (q & 0x0F) as f32 * d + m;
            hi[j] = (q >> 4) as f32 * d + m;
        }
    }
}

/// The 5-bit quant of element `j` (0..16) and `j + 16` from the nibble byte and the 32 high
/// bits (bit i of `qh` is the fifth bit of element i).
fn q5_pair(qs: u8, qh: u32, j: usize) -> (u8, u8) {
    let h0 = ((qh >> j) & 1) as u8;
    let h1 = ((qh >> (j + 16)) & 1) as u8;
    ((qs & 0x0F) | (h0 << 4), (qs >> 4) | (h1 << 4))
}

/// `block_q5_0`: x = d * (q - 16), q five bits with the high bits packed in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ5_0 {
    d: F16Le,
    qh: [u8; 4],
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

impl Block for BlockQ5_0 {
    const ELEMS: usize = 32;
    fn decode(&self, out: &mut [f32]) {
        let d = self.d.get();
        let qh = u32::from_le_bytes(self.qh);
        let (lo, hi) = out.split_at_mut(16);
        for (j, &q) in self.qs.iter().enumerate() {
            let (q0, q1) = q5_pair(q, qh, j);
            lo[j] = (q0 as i32 - 16) as f32 * d;
            hi[j] = (q1 as i32 - 16) as f32 * d;
        }
    }
}

/// `block_q5_1`: x = d * q + m, q five bits with the high bits packed in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ5_1 {
    d: F16Le,
    m: F16Le,
    qh: [u8; 4],
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

impl Block for BlockQ5_1 {
    const ELEMS: usize = 32;
    fn decode(&self, out: &mut [f32]) {
        let (d, m) = (self.d.get(), self.m.get());
        let qh = u32::from_le_bytes(self.qh);
        let (lo, hi) = out.split_at_mut(16);
        for (j, &q) in self.qs.iter().enumerate() {
            let (q0, q1) = q5_pair(q, qh, j);
            lo[j] = q0 as f32 * d + m;
            hi[j] = q1 as f32 * d + m;
        }
    }
}

/// `block_q8_0`: x = d * q, q signed bytes in order.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ8_0 {
    d: F16Le,
    qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl Block for BlockQ8_0 {
    const ELEMS: usize = 32;
    fn decode(&self, out: &mut [f32]) {
        let d = self.d.get();
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

/// `block_q8_1`: x = d * q; `s` (= d * sum q) only serves dot products.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ8_1 {
    d: F16Le,
    s: F16Le,
    qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

impl Block for BlockQ8_1 {
    const ELEMS: usize = 32;
    fn decode(&self, out: &mut [f32]) {
        let d = self.d.get();
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants: 256-element super-blocks with quantized per-sub-block scales.
// ---------------------------------------------------------------------------------------------

/// `block_q2_K`: 16 sub-blocks of 16, x = d * sc * q - dmin * m with 4-bit sc/m and 2-bit q.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ2K {
    scales: [u8; 16],
    qs: [u8; 64],
    d: F16Le,
    dmin: F16Le,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

impl Block for BlockQ2K {
    const ELEMS: usize = QK_K;
    fn decode(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        // Each 128-element half reads 32 bytes of qs; sub-block s of that half takes bit pair
        // s / 2 of bytes 0..16 (even s) or 16..32 (odd s).
        for (half, (qs, y_half)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(128))
            .enumerate()
        {
            for (s, y) in y_half.chunks_exact_mut(16).enumerate() {
                let sc = self.scales[half * 8 + s];
                let (dl, ml) = (d * (sc & 0x0F) as f32, dmin * (sc >> 4) as f32);
                let shift = 2 * (s / 2);
                let bytes = &qs[16 * (s % 2)..][..16];
                for (v, &q) in y.iter_mut().zip(bytes) {
                    *v = dl * ((q >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// Unpacks Q3_K's twelve bytes into sixteen 6-bit scales (still offset by 32): low nibbles
/// of bytes 0..8 are scales 0..8, their high nibbles scales 8..16, and bytes 8..12 carry the
/// two high bits of each, bit pair k of byte 8 + (i % 4) for scale i, k = i / 4.
fn q3k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let mut scales = [0i8; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0x0F
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i8;
    }
    scales
}

/// `block_q3_K`: 16 sub-blocks of 16, x = d * (sc - 32) * (q - 4 * !hbit), q 2 low bits in
/// `qs` plus a high bit in `hmask`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ3K {
    hmask: [u8; 32],
    qs: [u8; 64],
    scales: [u8; 12],
    d: F16Le,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

impl Block for BlockQ3K {
    const ELEMS: usize = QK_K;
    fn decode(&self, out: &mut [f32]) {
        let d = self.d.get();
        let scales = q3k_scales(&self.scales);
        for (half, (qs, y_half)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(128))
            .enumerate()
        {
            for (s, y) in y_half.chunks_exact_mut(16).enumerate() {
                let dl = d * (scales[half * 8 + s] as i32 - 32) as f32;
                let shift = 2 * (s / 2);
                // The high-bit plane advances once per bit pair, across both halves.
                let hbit = 1u8 << (half * 4 + s / 2);
                let off = 16 * (s % 2);
                for (l, v) in y.iter_mut().enumerate() {
                    let low = ((qs[off + l] >> shift) & 3) as i32;
                    let minus = if self.hmask[off + l] & hbit != 0 {
                        0
                    } else {
                        4
                    };
                    *v = dl * (low - minus) as f32;
                }
            }
        }
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12-byte 6-bit packing shared by Q4_K and
/// Q5_K (`get_scale_min_k4`): sub-blocks 0..4 use the low 6 bits of bytes j and j + 4;
/// sub-blocks 4..8 take 4 low bits from byte j + 4 (low/high nibble) and their top 2 bits
/// from the top bits of bytes j - 4 (scale) and j (min).
fn k4_scale_min(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        let sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (sc, m)
    }
}

/// `block_q4_K`: 8 sub-blocks of 32, x = d * sc * q - dmin * m, 6-bit sc/m, 4-bit q. Each
/// 32-byte run of `qs` holds two sub-blocks: low nibbles first, then high nibbles.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ4K {
    d: F16Le,
    dmin: F16Le,
    scales: [u8; 12],
    qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

impl Block for BlockQ4K {
    const ELEMS: usize = QK_K;
    fn decode(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        for (pair, (qs, y)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc0, m0) = k4_scale_min(2 * pair, &self.scales);
            let (sc1, m1) = k4_scale_min(2 * pair + 1, &self.scales);
            let (d0, d1) = (d * sc0 as f32, d * sc1 as f32);
            let (n0, n1) = (dmin * m0 as f32, dmin * m1 as f32);
            let (lo, hi) = y.split_at_mut(32);
            for (l, &q) in qs.iter().enumerate() {
                lo[l] = d0 * (q & 0x0F) as f32 - n0;
                hi[l] = d1 * (q >> 4) as f32 - n1;
            }
        }
    }
}

/// `block_q5_K`: as Q4_K with a fifth bit per element in `qh` (bit 2p for the low-nibble
/// sub-block of pair p, bit 2p + 1 for the high-nibble one).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ5K {
    d: F16Le,
    dmin: F16Le,
    scales: [u8; 12],
    qh: [u8; 32],
    qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl Block for BlockQ5K {
    const ELEMS: usize = QK_K;
    fn decode(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        for (pair, (qs, y)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc0, m0) = k4_scale_min(2 * pair, &self.scales);
            let (sc1, m1) = k4_scale_min(2 * pair + 1, &self.scales);
            let (d0, d1) = (d * sc0 as f32, d * sc1 as f32);
            let (n0, n1) = (dmin * m0 as f32, dmin * m1 as f32);
            let (lo, hi) = y.split_at_mut(32);
            for (l, &q) in qs.iter().enumerate() {
                let h0 = ((self.qh[l] >> (2 * pair)) & 1) << 4;
                let h1 = ((self.qh[l] >> (2 * pair + 1)) & 1) << 4;
                lo[l] = d0 * ((q & 0x0F) | h0) as f32 - n0;
                hi[l] = d1 * ((q >> 4) | h1) as f32 - n1;
            }
        }
    }
}

/// `block_q6_K`: 16 sub-blocks of 16, x = d * sc * (q - 32), signed 8-bit sc, 6-bit q split
/// into 4 low bits (`ql`) and 2 high bits (`qh`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ6K {
    ql: [u8; 128],
    qh: [u8; 64],
    scales: [i8; 16],
    d: F16Le,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

impl Block for BlockQ6K {
    const ELEMS: usize = QK_K;
    fn decode(&self, out: &mut [f32]) {
        let d = self.d.get();
        // Each 128-element half uses 64 bytes of ql and 32 of qh. Within it, quarter k
        // (32 elements) takes ql[l] (k = 0, 2) or ql[l + 32] (k = 1, 3), low nibble for
        // k < 2, high for k >= 2, and bit pair k of qh[l].
        for (half, y_half) in out.chunks_exact_mut(128).enumerate() {
            let ql = &self.ql[64 * half..][..64];
            let qh = &self.qh[32 * half..][..32];
            let sc = &self.scales[8 * half..][..8];
            for (k, y) in y_half.chunks_exact_mut(32).enumerate() {
                let ql_k = &ql[32 * (k % 2)..][..32];
                let nib_shift = 4 * (k / 2);
                for (l, v) in y.iter_mut().enumerate() {
                    let low = (ql_k[l] >> nib_shift) & 0x0F;
                    let high = (qh[l] >> (2 * k)) & 3;
                    let q = (low | (high << 4)) as i32 - 32;
                    let scale = sc[2 * k + l / 16] as f32;
                    *v = d * scale * q as f32;
                }
            }
        }
    }
}

/// `block_q8_K`: x = d * q with an `f32` scale; `bsums` only serve dot products.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ8K {
    d: F32Le,
    qs: [i8; 256],
    bsums: [u8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl Block for BlockQ8K {
    const ELEMS: usize = QK_K;
    fn decode(&self, out: &mut [f32]) {
        let d = f32::from_le_bytes(self.d.0);
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

/// Blocks decoded per parallel task: large enough to amortize scheduling, small enough to
/// balance a few-hundred-KB tensor over the cores.
const TARGET_CHUNK_ELEMS: usize = 16 * 1024;

/// Decodes a whole slice of `B` blocks into `out`, in parallel chunks.
fn decode_all<B: Block>(bytes: &[u8], out: &mut [f32]) {
    let blocks: &[B] = bytemuck::cast_slice(bytes);
    debug_assert_eq!(blocks.len() * B::ELEMS, out.len());
    let per_chunk = (TARGET_CHUNK_ELEMS / B::ELEMS).max(1);
    blocks
        .par_chunks(per_chunk)
        .zip(out.par_chunks_mut(per_chunk * B::ELEMS))
        .for_each(|(blocks, out)| {
            for (block, y) in blocks.iter().zip(out.chunks_exact_mut(B::ELEMS)) {
                block.decode(y);
            }
        });
}

/// Dequantizes `n_elements` values of type `dtype` from `bytes` into `out`, so that any
/// supported GGUF tensor can be turned into plain `f32` weights.
///
/// `bytes` must hold exactly the data of `n_elements` values (a whole number of blocks) and
/// `out` must be exactly `n_elements` long; values come out in ggml order (ne0 contiguous).
pub fn dequantize(
    dtype: GgmlType,
    bytes: &[u8],
    n_elements: usize,
    out: &mut [f32],
) -> Result<(), GgufError> {
    check_lengths(dtype, bytes.len(), n_elements, out.len())?;
    match dtype {
        GgmlType::F32 => decode_all::<F32Le>(bytes, out),
        GgmlType::F16 => decode_all::<F16Le>(bytes, out),
        GgmlType::BF16 => decode_all::<Bf16Le>(bytes, out),
        GgmlType::Q4_0 => decode_all::<BlockQ4_0>(bytes, out),
        GgmlType::Q4_1 => decode_all::<BlockQ4_1>(bytes, out),
        GgmlType::Q5_0 => decode_all::<BlockQ5_0>(bytes, out),
        GgmlType::Q5_1 => decode_all::<BlockQ5_1>(bytes, out),
        GgmlType::Q8_0 => decode_all::<BlockQ8_0>(bytes, out),
        GgmlType::Q8_1 => decode_all::<BlockQ8_1>(bytes, out),
        GgmlType::Q2_K => decode_all::<BlockQ2K>(bytes, out),
        GgmlType::Q3_K => decode_all::<BlockQ3K>(bytes, out),
        GgmlType::Q4_K => decode_all::<BlockQ4K>(bytes, out),
        GgmlType::Q5_K => decode_all::<BlockQ5K>(bytes, out),
        GgmlType::Q6_K => decode_all::<BlockQ6K>(bytes, out),
        GgmlType::Q8_K => decode_all::<BlockQ8K>(bytes, out),
        GgmlType::Other(_) => return Err(GgufError::Unsupported { dtype }),
    }
    Ok(())
}

/// Checks that the element count is whole blocks and both buffers match it exactly.
fn check_lengths(
    dtype: GgmlType,
    n_bytes: usize,
    n_elements: usize,
    n_out: usize,
) -> Result<(), GgufError> {
    let bad = |msg: String| GgufError::BadLength { dtype, msg };
    if !dtype.can_dequantize() {
        return Err(GgufError::Unsupported { dtype });
    }
    let (elems, block_bytes) = dtype
        .block_layout()
        .ok_or(GgufError::Unsupported { dtype })?;
    if !n_elements.is_multiple_of(elems) {
        return Err(bad(format!(
            "{n_elements} elements is not a whole number of {elems}-element blocks"
        )));
    }
    let want = (n_elements / elems)
        .checked_mul(block_bytes)
        .ok_or_else(|| bad(format!("{n_elements} elements overflow the byte size")))?;
    if n_bytes != want {
        return Err(bad(format!(
            "{n_elements} elements need {want} bytes, got {n_bytes}"
        )));
    }
    if n_out != n_elements {
        return Err(bad(format!(
            "output holds {n_out} values, expected {n_elements}"
        )));
    }
    Ok(())
}
