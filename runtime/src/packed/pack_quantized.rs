//! compressed-tensors' `pack-quantized` layout (`format: pack-quantized` in a checkpoint's
//! `quantization_config`), which transformers and vLLM load.
//!
//! # The layout, as compressed-tensors defines it
//!
//! Checked against `vllm-project/compressed-tensors`,
//! `src/compressed_tensors/compressors/quantized_compressors/pack_quantized.py`
//! (`pack_to_int32`, `unpack_from_int32`, `PackedQuantizationCompressor.compress_module`) and
//! the older `neuralmagic/compressed-tensors` copy of the same file
//! (`compression_param_info`, `compress_weight`, `decompress_weight`):
//!
//! * **Codes** are signed, `[−2^(b−1), 2^(b−1) − 1]` (see `lmq_quant::scheme`). Packing first
//!   adds `2^(b−1)` (`offset = 1 << (num_bits − 1)`), giving unsigned stored values
//!   `[0, 2^b − 1]`; unpacking subtracts `pow(2, num_bits) // 2`, the same offset.
//! * **Pack factor** `32 / b` values per int32 word (integer division: 2-bit 16, 3-bit 10
//!   with the top 2 bits of every word zero, 4-bit 8, 8-bit 4); any `1 ≤ b ≤ 8` is accepted
//!   there, although `PackedQuantizationCompressor.match_scheme` only picks the format for
//!   4 and 8 bits.
//! * **Bit order**: value `i` of a word sits at bits `[i·b, (i+1)·b)`, the first value in
//!   the lowest bits (`reshaped << arange(pack_factor) * num_bits`, summed). The word is the
//!   resulting 32-bit pattern read as int32 (a 4-bit value ≥ 8 in the last slot makes it
//!   negative).
//! * **`weight_packed`**: int32 `[out, ceil(in / pack_factor)]`, packed along the input
//!   dimension (`packed_dim=1`). A row whose length is not a multiple of the pack factor is
//!   padded with stored value 0 (`torch.nn.functional.pad`), and `unpack_from_int32` drops the
//!   padding using `weight_shape`; so any column count is allowed.
//! * **`weight_shape`**: the unpacked `[out, in]`, written as `torch.tensor(weight.shape)`,
//!   i.e. int64 `[2]` (`compression_param_info` declares int32; readers should take either).
//! * **`weight_scale`**: `[out, n_groups]` (per-channel: `[out, 1]`) in the model's float dtype
//!   (`initialize_qparams`: the observed weight's dtype); not packed.
//! * **`weight_zero_point`**: for asymmetric `group`/`channel` schemes, packed with the same
//!   `pack_to_int32` but along the *output* dimension (`packed_dim=0`): int32
//!   `[ceil(out / pack_factor), n_groups]`, word `(r / pf, g)` holding `zero[r][g]` at slot
//!   `r % pf`, rows padded with stored 0. For symmetric schemes it is never packed: the
//!   `quantized_compressors/base.py` `compress` path leaves it out of the checkpoint
//!   (`_skip_zp`), the newer `compress_module` path leaves any all-zero int8 `[out, n_groups]`
//!   zero point unpacked; a reader takes an absent or unpacked symmetric zero point as 0.
//! * **`weight_g_idx`**: int32 `[in]`, the group of each input column (GPTQ activation order);
//!   absent means column `c` is in group `c / group_size`.
//! * **Dequantize** (`forward.py::_dequantize`): `w = (q − zp) · scale`.

use rayon::prelude::*;

/// Widest code compressed-tensors packs (`pack_to_int32` rejects `num_bits > 8`).
pub const MAX_BITS: u8 = 8;

/// Output rows per rayon task when dequantizing: one row of a small linear is too little work
/// to schedule alone.
const ROWS_PER_TASK: usize = 8;

/// What can make a packed weight or a pack/unpack call invalid. Every variant is a caller or
/// file error (wrong shape, out-of-range value), reported instead of producing a garbled
/// weight.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PackError {
    /// compressed-tensors packs only `1 ≤ bits ≤ 8`.
    #[error("cannot pack {bits}-bit values: compressed-tensors packs 1 to 8 bits")]
    UnsupportedBits { bits: u8 },
    /// A buffer whose length disagrees with the shape given with it.
    #[error("{what} has {got} elements, expected {expected}")]
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A value that does not fit its code width (it would spill into the next packed slot).
    #[error("{what}: value {value} at flat index {index} is outside [{min}, {max}]")]
    ValueOutOfRange {
        what: &'static str,
        index: usize,
        value: i64,
        min: i64,
        max: i64,
    },
    /// Padding bits of a packed word that are not zero: the file was not written by
    /// `pack_to_int32` with these dimensions and bit width.
    #[error("{what}: packed word {index} has non-zero padding bits ({word:#010x})")]
    NonZeroPadding {
        what: &'static str,
        index: usize,
        word: u32,
    },
    /// Group size 0, which cannot map a column to a group.
    #[error("group size 0 is invalid")]
    ZeroGroupSize,
    /// A `g_idx` entry that names no existing group.
    #[error("g_idx maps column {column} to group {group}, but there are {n_groups} groups")]
    GroupIndexOutOfRange {
        column: usize,
        group: i32,
        n_groups: usize,
    },
}

/// Values per int32 word for `bits`-bit codes: `32 / bits` (compressed-tensors'
/// `pack_factor`). Errors outside `1..=8`.
pub fn pack_factor(bits: u8) -> Result<usize, PackError> {
    if bits == 0 || bits > MAX_BITS {
        return Err(PackError::UnsupportedBits { bits });
    }
    Ok(32 / usize::from(bits))
}

/// Words needed for `n` values: `ceil(n / pack_factor)`.
pub fn packed_len(n: usize, bits: u8) -> Result<usize, PackError> {
    Ok(n.div_ceil(pack_factor(bits)?))
}

/// The offset between signed codes and stored values, `2^(b−1)`.
pub fn storage_offset(bits: u8) -> i32 {
    1 << (u32::from(bits.clamp(1, MAX_BITS)) - 1)
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), PackError> {
    if got == expected {
        Ok(())
    } else {
        Err(PackError::ShapeMismatch {
            what,
            expected,
            got,
        })
    }
}

/// Packs unsigned stored values (`q + 2^(b−1)`, each `< 2^b`) of a row-major `[rows, cols]`
/// matrix along `cols`: `pack_to_int32(…, packed_dim=1)` without the offset step. Returns
/// `[rows, ceil(cols / pf)]`, each row's last word padded with zeros.
pub fn pack_int32(
    stored: &[u8],
    rows: usize,
    cols: usize,
    bits: u8,
) -> Result<Vec<i32>, PackError> {
    let pf = pack_factor(bits)?;
    check_len("stored values", stored.len(), rows * cols)?;
    let max = (1u32 << bits) - 1;
    if let Some(index) = stored.iter().position(|&v| u32::from(v) > max) {
        return Err(PackError::ValueOutOfRange {
            what: "stored values",
            index,
            value: i64::from(stored[index]),
            min: 0,
            max: i64::from(max),
        });
    }
    let wpr = cols.div_ceil(pf);
    let mut out = vec![0i32; rows * wpr];
    if cols == 0 {
        return Ok(out);
    }
    for (dst, src) in out.chunks_exact_mut(wpr).zip(stored.chunks_exact(cols)) {
        for (word, vals) in dst.iter_mut().zip(src.chunks(pf)) {
            let mut w = 0u32;
            for (i, &v) in vals.iter().enumerate() {
                w |= u32::from(v) << (i * usize::from(bits));
            }
            *word = w as i32;
        }
    }
    Ok(out)
}

/// Packs signed codes (`[−2^(b−1), 2^(b−1) − 1]`) along the input dimension: exactly
/// compressed-tensors' `pack_to_int32(codes, bits)` (offset, then [`pack_int32`]).
pub fn pack_codes_int32(
    codes: &[i8],
    rows: usize,
    cols: usize,
    bits: u8,
) -> Result<Vec<i32>, PackError> {
    let stored = codes_to_stored(codes, bits, "codes")?;
    pack_int32(&stored, rows, cols, bits)
}

fn codes_to_stored(codes: &[i8], bits: u8, what: &'static str) -> Result<Vec<u8>, PackError> {
    pack_factor(bits)?;
    let off = storage_offset(bits);
    let (min, max) = (-off, off - 1);
    codes
        .iter()
        .enumerate()
        .map(|(index, &q)| {
            let q = i32::from(q);
            if q < min || q > max {
                Err(PackError::ValueOutOfRange {
                    what,
                    index,
                    value: i64::from(q),
                    min: i64::from(min),
                    max: i64::from(max),
                })
            } else {
                Ok((q + off) as u8)
            }
        })
        .collect()
}

/// Unpacks `[rows, ceil(cols / pf)]` words into unsigned stored values `[rows, cols]`
/// (`unpack_from_int32` without the final offset), dropping the padding. Padding bits that
/// are not zero are an error: they mean the dimensions or the bit width are wrong.
pub fn unpack_int32(
    packed: &[i32],
    rows: usize,
    cols: usize,
    bits: u8,
) -> Result<Vec<u8>, PackError> {
    let pf = pack_factor(bits)?;
    let wpr = cols.div_ceil(pf);
    check_len("packed words", packed.len(), rows * wpr)?;
    let b = usize::from(bits);
    let mask = (1u32 << bits) - 1;
    let mut out = vec![0u8; rows * cols];
    if cols == 0 {
        return Ok(out);
    }
    for (r, (dst, src)) in out
        .chunks_exact_mut(cols)
        .zip(packed.chunks_exact(wpr))
        .enumerate()
    {
        for (j, (vals, &word)) in dst.chunks_mut(pf).zip(src).enumerate() {
            let word = word as u32;
            let used_bits = vals.len() * b;
            if used_bits < 32 && word >> used_bits != 0 {
                return Err(PackError::NonZeroPadding {
                    what: "packed words",
                    index: r * wpr + j,
                    word,
                });
            }
            for (i, v) in vals.iter_mut().enumerate() {
                *v = ((word >> (i * b)) & mask) as u8;
            }
        }
    }
    Ok(out)
}

/// Unpacks to signed codes: compressed-tensors' `unpack_from_int32(packed, bits, [rows, cols])`.
pub fn unpack_codes_int32(
    packed: &[i32],
    rows: usize,
    cols: usize,
    bits: u8,
) -> Result<Vec<i8>, PackError> {
    let off = storage_offset(bits);
    Ok(unpack_int32(packed, rows, cols, bits)?
        .into_iter()
        .map(|v| (i32::from(v) - off) as i8)
        .collect())
}

fn transpose<T: Copy + Default>(a: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// Packs asymmetric zero points `[rows, n_groups]` (signed, like codes) along the *output*
/// dimension, as `pack_to_int32(zero_point, bits, packed_dim=0)`: returns
/// `[ceil(rows / pf), n_groups]`.
pub fn pack_zero_points(
    zero: &[i8],
    rows: usize,
    n_groups: usize,
    bits: u8,
) -> Result<Vec<i32>, PackError> {
    check_len("zero points", zero.len(), rows * n_groups)?;
    let stored = codes_to_stored(zero, bits, "zero points")?;
    let packed_t = pack_int32(&transpose(&stored, rows, n_groups), n_groups, rows, bits)?;
    Ok(transpose(
        &packed_t,
        n_groups,
        rows.div_ceil(pack_factor(bits)?),
    ))
}

/// Inverse of [`pack_zero_points`] (`unpack_from_int32(…, packed_dim=0)`): `[rows, n_groups]`
/// signed zero points from `[ceil(rows / pf), n_groups]` words.
pub fn unpack_zero_points(
    packed: &[i32],
    rows: usize,
    n_groups: usize,
    bits: u8,
) -> Result<Vec<i8>, PackError> {
    let wpc = rows.div_ceil(pack_factor(bits)?);
    check_len("packed zero points", packed.len(), wpc * n_groups)?;
    let codes_t = unpack_codes_int32(&transpose(packed, wpc, n_groups), n_groups, rows, bits)?;
    Ok(transpose(&codes_t, n_groups, rows))
}

/// A linear weight in `pack-quantized` form as the runtime holds it: codes stay packed
/// (`weight_packed`), scales in f32, zero points unpacked (they are tiny, and unpacked they
/// are read directly by the kernels). `[rows, cols]` = `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedLinear {
    /// Bits per code, `1..=8`.
    pub bits: u8,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Input columns per group (`cols` for per-channel); column `c` is in group
    /// `c / group_size` unless `g_idx` says otherwise.
    pub group_size: usize,
    /// `weight_packed`: `[rows, ceil(cols / pack_factor)]`, see the module docs.
    pub packed: Vec<i32>,
    /// `weight_scale` as f32, `[rows, n_groups]`.
    pub scale: Vec<f32>,
    /// Signed zero points `[rows, n_groups]`; `None` for a symmetric scheme (zero point 0).
    pub zero: Option<Vec<i8>>,
    /// `weight_g_idx`, `[cols]`: the group of each input column (GPTQ activation order).
    pub g_idx: Option<Vec<i32>>,
}

impl PackedLinear {
    /// Builds and validates a packed weight from its parts (zero points already unpacked).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bits: u8,
        rows: usize,
        cols: usize,
        group_size: usize,
        packed: Vec<i32>,
        scale: Vec<f32>,
        zero: Option<Vec<i8>>,
        g_idx: Option<Vec<i32>>,
    ) -> Result<Self, PackError> {
        let w = Self {
            bits,
            rows,
            cols,
            group_size,
            packed,
            scale,
            zero,
            g_idx,
        };
        w.validate()?;
        Ok(w)
    }

    /// Packs signed codes `[rows, cols]` (as `lmq_quant`'s `QuantizedWeight::codes`) with
    /// their scales and zero points; `zero: None` for symmetric schemes.
    #[allow(clippy::too_many_arguments)]
    pub fn from_codes(
        bits: u8,
        rows: usize,
        cols: usize,
        group_size: usize,
        codes: &[i8],
        scale: Vec<f32>,
        zero: Option<Vec<i8>>,
        g_idx: Option<Vec<i32>>,
    ) -> Result<Self, PackError> {
        let packed = pack_codes_int32(codes, rows, cols, bits)?;
        Self::new(bits, rows, cols, group_size, packed, scale, zero, g_idx)
    }

    /// Builds from the tensors of a checkpoint: `weight_packed`, `weight_scale` (as f32),
    /// the *packed* `weight_zero_point` of an asymmetric scheme, and `weight_g_idx`.
    /// `n_groups` is `weight_scale`'s second dimension.
    #[allow(clippy::too_many_arguments)]
    pub fn from_compressed_tensors(
        bits: u8,
        rows: usize,
        cols: usize,
        group_size: usize,
        weight_packed: Vec<i32>,
        weight_scale: Vec<f32>,
        weight_zero_point_packed: Option<&[i32]>,
        weight_g_idx: Option<Vec<i32>>,
    ) -> Result<Self, PackError> {
        let n_groups = weight_scale.len().checked_div(rows).unwrap_or(0);
        let zero = weight_zero_point_packed
            .map(|z| unpack_zero_points(z, rows, n_groups, bits))
            .transpose()?;
        Self::new(
            bits,
            rows,
            cols,
            group_size,
            weight_packed,
            weight_scale,
            zero,
            weight_g_idx,
        )
    }

    /// Values per packed word.
    pub fn pack_factor(&self) -> usize {
        32 / usize::from(self.bits.clamp(1, MAX_BITS))
    }

    /// int32 words per output row.
    pub fn words_per_row(&self) -> usize {
        self.cols.div_ceil(self.pack_factor())
    }

    /// Scales (and zero points) per row: `ceil(cols / group_size)` without `g_idx`, else as
    /// many as `scale` holds per row (`g_idx` may name groups in any order).
    pub fn n_groups(&self) -> usize {
        match (&self.g_idx, self.rows) {
            (Some(_), r) if r > 0 => self.scale.len() / r,
            _ => self.cols.div_ceil(self.group_size.max(1)),
        }
    }

    /// Group of input column `col`.
    #[inline]
    pub fn group_of(&self, col: usize) -> usize {
        match &self.g_idx {
            Some(g) => g[col] as usize,
            None => col / self.group_size,
        }
    }

    /// Checks every buffer against the dimensions and every value against its range, so the
    /// kernels can index without bounds surprises.
    pub fn validate(&self) -> Result<(), PackError> {
        pack_factor(self.bits)?;
        if self.group_size == 0 {
            return Err(PackError::ZeroGroupSize);
        }
        check_len(
            "weight_packed",
            self.packed.len(),
            self.rows * self.words_per_row(),
        )?;
        let n_groups = self.n_groups();
        check_len("weight_scale", self.scale.len(), self.rows * n_groups)?;
        if let Some(z) = &self.zero {
            check_len("weight_zero_point", z.len(), self.rows * n_groups)?;
            codes_to_stored(z, self.bits, "weight_zero_point")?;
        }
        if let Some(g) = &self.g_idx {
            check_len("weight_g_idx", g.len(), self.cols)?;
            if let Some((column, &group)) = g
                .iter()
                .enumerate()
                .find(|&(_, &v)| v < 0 || v as usize >= n_groups)
            {
                return Err(PackError::GroupIndexOutOfRange {
                    column,
                    group,
                    n_groups,
                });
            }
        }
        // Padding bits must be zero (checks the packing and the bit width together).
        unpack_int32(&self.packed, self.rows, self.cols, self.bits)?;
        Ok(())
    }

    /// The signed codes `[rows, cols]`.
    pub fn unpack_codes(&self) -> Result<Vec<i8>, PackError> {
        unpack_codes_int32(&self.packed, self.rows, self.cols, self.bits)
    }

    /// `weight_zero_point` as the checkpoint stores it for an asymmetric scheme
    /// (`[ceil(rows / pf), n_groups]` int32), or `None` for a symmetric one.
    pub fn packed_zero_point(&self) -> Result<Option<Vec<i32>>, PackError> {
        self.zero
            .as_ref()
            .map(|z| pack_zero_points(z, self.rows, self.n_groups(), self.bits))
            .transpose()
    }

    /// The scalar reference: `[rows, cols]` f32 with `w = (q − zp) · scale` per element, the
    /// group from `g_idx` when present (compressed-tensors' `_dequantize`). Everything fast
    /// is tested against this. Assumes a validated weight (panics on out-of-range parts).
    pub fn dequantize_ref(&self) -> Vec<f32> {
        let (pf, b) = (self.pack_factor(), usize::from(self.bits));
        let (wpr, n_groups) = (self.words_per_row(), self.n_groups());
        let mask = (1u32 << self.bits) - 1;
        let off = storage_offset(self.bits);
        let mut out = vec![0.0f32; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let word = self.packed[r * wpr + c / pf] as u32;
                let q = ((word >> ((c % pf) * b)) & mask) as i32 - off;
                let g = self.group_of(c);
                let zp = self
                    .zero
                    .as_ref()
                    .map_or(0, |z| i32::from(z[r * n_groups + g]));
                out[r * self.cols + c] = (q - zp) as f32 * self.scale[r * n_groups + g];
            }
        }
        out
    }

    /// Dequantizes output rows `[row0, row0 + out.len() / cols)` into `out` (row-major), in
    /// parallel: what the prefill path feeds the dense kernel one band at a time. Same
    /// arithmetic as [`Self::dequantize_ref`] (bit-identical results), without its per-element
    /// index arithmetic.
    pub fn dequantize_rows_into(&self, row0: usize, out: &mut [f32]) {
        let cols = self.cols;
        if cols == 0 {
            return;
        }
        assert!(out.len().is_multiple_of(cols), "band is not whole rows");
        assert!(
            row0 + out.len() / cols <= self.rows,
            "band past the last row"
        );
        let pf = self.pack_factor();
        let (wpr, n_groups) = (self.words_per_row(), self.n_groups());
        let groups: Option<Vec<usize>> = self
            .g_idx
            .as_ref()
            .map(|g| g.iter().map(|&v| v as usize).collect());
        // Whole words per group (no `g_idx`): each group's scale and zero point are read once
        // and its words unpacked with the width known at compile time, which the compiler
        // vectorizes; the prefill path spent a tenth of its time here with the per-element
        // group lookup below.
        let whole_words = groups.is_none() && self.group_size.is_multiple_of(pf);
        out.par_chunks_mut(cols)
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(i, dst)| {
                let r = row0 + i;
                let words = &self.packed[r * wpr..(r + 1) * wpr];
                let scales = &self.scale[r * n_groups..(r + 1) * n_groups];
                let zeros = self
                    .zero
                    .as_ref()
                    .map(|z| &z[r * n_groups..(r + 1) * n_groups]);
                if whole_words {
                    match self.bits {
                        2 => {
                            dequantize_row_grouped::<2>(words, scales, zeros, self.group_size, dst)
                        }
                        4 => {
                            dequantize_row_grouped::<4>(words, scales, zeros, self.group_size, dst)
                        }
                        8 => {
                            dequantize_row_grouped::<8>(words, scales, zeros, self.group_size, dst)
                        }
                        _ => dequantize_row_any(self, words, scales, zeros, None, dst),
                    }
                } else {
                    dequantize_row_any(self, words, scales, zeros, groups.as_deref(), dst);
                }
            });
    }
}

/// One row of [`PackedLinear::dequantize_rows_into`] for any layout: the group of each column
/// from `g_idx` or `column / group_size`.
fn dequantize_row_any(
    w: &PackedLinear,
    words: &[i32],
    scales: &[f32],
    zeros: Option<&[i8]>,
    groups: Option<&[usize]>,
    dst: &mut [f32],
) {
    let (pf, b) = (w.pack_factor(), usize::from(w.bits));
    let mask = (1u32 << w.bits) - 1;
    let off = storage_offset(w.bits);
    for (j, (vals, &word)) in dst.chunks_mut(pf).zip(words).enumerate() {
        let word = word as u32;
        for (s, v) in vals.iter_mut().enumerate() {
            let c = j * pf + s;
            let g = match groups {
                Some(g) => g[c],
                None => c / w.group_size,
            };
            let q = ((word >> (s * b)) & mask) as i32 - off;
            let zp = zeros.map_or(0, |z| i32::from(z[g]));
            *v = (q - zp) as f32 * scales[g];
        }
    }
}

/// One row of [`PackedLinear::dequantize_rows_into`] when every group is whole `BITS`-bit
/// words: `(q − zp) · scale` as the reference computes it, group by group.
fn dequantize_row_grouped<const BITS: usize>(
    words: &[i32],
    scales: &[f32],
    zeros: Option<&[i8]>,
    group_size: usize,
    dst: &mut [f32],
) {
    let pf = 32 / BITS;
    let mask = (1u32 << BITS) - 1;
    let off = storage_offset(BITS as u8);
    for (g, (gdst, gwords)) in dst
        .chunks_mut(group_size)
        .zip(words.chunks(group_size / pf))
        .enumerate()
    {
        let (s, base) = (scales[g], off + zeros.map_or(0, |z| i32::from(z[g])));
        for (vals, &word) in gdst.chunks_mut(pf).zip(gwords) {
            let word = word as u32;
            for (i, v) in vals.iter_mut().enumerate() {
                *v = (((word >> (i * BITS)) & mask) as i32 - base) as f32 * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic signed codes covering the whole range of `bits`.
    fn codes(n: usize, bits: u8, seed: usize) -> Vec<i8> {
        let off = storage_offset(bits) as usize;
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) >> 3) % (2 * off)) as i32 - off as i32)
            .map(|v| v as i8)
            .collect()
    }

    #[test]
    fn pack_factors_match_compressed_tensors_integer_division() {
        assert_eq!(pack_factor(2), Ok(16));
        assert_eq!(pack_factor(3), Ok(10));
        assert_eq!(pack_factor(4), Ok(8));
        assert_eq!(pack_factor(8), Ok(4));
        assert_eq!(pack_factor(0), Err(PackError::UnsupportedBits { bits: 0 }));
        assert_eq!(pack_factor(9), Err(PackError::UnsupportedBits { bits: 9 }));
        assert_eq!(packed_len(576, 4), Ok(72));
        assert_eq!(packed_len(576, 3), Ok(58));
    }

    #[test]
    fn hand_packed_words_follow_the_definition() {
        // 4-bit stored values 0..7 in one word: value i at bits [4i, 4i+4).
        let stored: Vec<u8> = (0..8).collect();
        assert_eq!(pack_int32(&stored, 1, 8, 4).unwrap(), vec![0x7654_3210]);
        // Signed codes −8..−1 are stored 0..7: the same word.
        let c: Vec<i8> = (-8..0).collect();
        assert_eq!(pack_codes_int32(&c, 1, 8, 4).unwrap(), vec![0x7654_3210]);
        // Stored 15 in the last slot sets the sign bit: the word is negative as int32.
        let stored = [1u8, 0, 0, 0, 0, 0, 0, 15];
        assert_eq!(
            pack_int32(&stored, 1, 8, 4).unwrap(),
            vec![0xF000_0001u32 as i32]
        );
        // compressed-tensors' docstring example: 8-bit codes [1, 2] -> [129, 130, pad, pad]
        // -> 0x00008281 = 33409.
        assert_eq!(pack_codes_int32(&[1, 2], 1, 2, 8).unwrap(), vec![33409]);
        // 3-bit: ten values per word, bits 30..31 unused. Stored 7 everywhere = 0x3FFF_FFFF.
        assert_eq!(pack_int32(&[7u8; 10], 1, 10, 3).unwrap(), vec![0x3FFF_FFFF]);
        // 2-bit: stored [1, 2, 3] then padding: 1 | 2<<2 | 3<<4 = 0b11_10_01 = 0x39.
        assert_eq!(pack_int32(&[1, 2, 3], 1, 3, 2).unwrap(), vec![0x39]);
        // Two rows of 9 4-bit values: each row padded to two words on its own.
        let stored: Vec<u8> = (0..18).map(|i| (i % 16) as u8).collect();
        assert_eq!(
            pack_int32(&stored, 2, 9, 4).unwrap(),
            vec![0x7654_3210, 0x8, 0x0FED_CBA9, 0x1]
        );
    }

    #[test]
    fn pack_unpack_round_trips_for_every_width_and_ragged_columns() {
        for bits in [2u8, 3, 4, 8] {
            let pf = pack_factor(bits).unwrap();
            for (rows, cols) in [
                (1, pf),
                (3, 4 * pf),
                (5, 1),
                (4, pf + 1),
                (7, 3 * pf - 1),
                (2, 576),
            ] {
                let c = codes(rows * cols, bits, usize::from(bits) + cols);
                let p = pack_codes_int32(&c, rows, cols, bits).unwrap();
                assert_eq!(
                    p.len(),
                    rows * cols.div_ceil(pf),
                    "bits {bits} {rows}x{cols}"
                );
                let back = unpack_codes_int32(&p, rows, cols, bits).unwrap();
                assert_eq!(back, c, "bits {bits} {rows}x{cols}");
            }
        }
    }

    #[test]
    fn out_of_range_values_and_bad_padding_are_errors() {
        assert!(matches!(
            pack_int32(&[16], 1, 1, 4),
            Err(PackError::ValueOutOfRange {
                index: 0,
                value: 16,
                ..
            })
        ));
        assert!(matches!(
            pack_codes_int32(&[0, 8], 1, 2, 4),
            Err(PackError::ValueOutOfRange {
                index: 1,
                value: 8,
                min: -8,
                max: 7,
                ..
            })
        ));
        assert!(matches!(
            pack_codes_int32(&[0, 0], 1, 3, 4),
            Err(PackError::ShapeMismatch { .. })
        ));
        // One 4-bit value in a word whose slot 1 is set: the padding is not zero.
        assert_eq!(
            unpack_int32(&[0x10], 1, 1, 4),
            Err(PackError::NonZeroPadding {
                what: "packed words",
                index: 0,
                word: 0x10
            })
        );
        // 3-bit words must leave bits 30..31 clear.
        assert!(matches!(
            unpack_int32(&[1 << 30], 1, 10, 3),
            Err(PackError::NonZeroPadding { .. })
        ));
    }

    #[test]
    fn zero_points_pack_along_the_output_dimension() {
        // 9 rows, 2 groups, 4-bit: [ceil(9/8), 2] = [2, 2] words; word (0, g) holds rows 0..8
        // of group g, word (1, g) row 8 alone.
        let zero: Vec<i8> = (0..18).map(|i| ((i % 16) - 8) as i8).collect(); // stored = i % 16
        let p = pack_zero_points(&zero, 9, 2, 4).unwrap();
        // Group 0 holds flat indices 0, 2, 4, …, 16 → stored 0, 2, 4, 6, 8, 10, 12, 14 | 0.
        // Group 1 holds 1, 3, …, 17 → stored 1, 3, 5, 7, 9, 11, 13, 15 | 1.
        assert_eq!(
            p,
            vec![0xECA8_6420u32 as i32, 0xFDB9_7531u32 as i32, 0x0, 0x1]
        );
        assert_eq!(unpack_zero_points(&p, 9, 2, 4).unwrap(), zero);
        for bits in [2u8, 3, 4, 8] {
            for (rows, n_groups) in [(1, 1), (17, 3), (64, 9)] {
                let z = codes(rows * n_groups, bits, 3);
                let p = pack_zero_points(&z, rows, n_groups, bits).unwrap();
                assert_eq!(
                    p.len(),
                    rows.div_ceil(pack_factor(bits).unwrap()) * n_groups
                );
                assert_eq!(unpack_zero_points(&p, rows, n_groups, bits).unwrap(), z);
            }
        }
    }

    #[test]
    fn dequantize_ref_of_a_hand_built_weight() {
        // 2 rows x 8 cols, 4-bit asymmetric, group 4.
        let codes: Vec<i8> = vec![-8, -1, 0, 7, 3, 3, -2, 1, 0, 1, 2, 3, -8, -7, 6, 7];
        let scale = vec![0.5, 2.0, 0.25, 1.0];
        let zero = vec![-1, 3, 0, -8];
        let w = PackedLinear::from_codes(4, 2, 8, 4, &codes, scale, Some(zero), None).unwrap();
        let want = [
            -3.5, 0.0, 0.5, 4.0, // (q + 1) * 0.5
            0.0, 0.0, -10.0, -4.0, // (q - 3) * 2
            0.0, 0.25, 0.5, 0.75, // q * 0.25
            0.0, 1.0, 14.0, 15.0, // (q + 8) * 1
        ];
        assert_eq!(w.dequantize_ref(), want);
        let mut band = vec![0.0; 8];
        w.dequantize_rows_into(1, &mut band);
        assert_eq!(band, want[8..]);
        assert_eq!(w.unpack_codes().unwrap(), codes);
        // Through the checkpoint form (packed zero point) and back.
        let zp = w.packed_zero_point().unwrap().unwrap();
        let again = PackedLinear::from_compressed_tensors(
            4,
            2,
            8,
            4,
            w.packed.clone(),
            w.scale.clone(),
            Some(&zp),
            None,
        )
        .unwrap();
        assert_eq!(again, w);

        // Symmetric, with g_idx sending columns to groups out of order.
        let g_idx = vec![1, 0, 1, 0];
        let w = PackedLinear::from_codes(
            8,
            1,
            4,
            2,
            &[-128, 127, 2, -3],
            vec![0.5, 0.125],
            None,
            Some(g_idx),
        )
        .unwrap();
        assert_eq!(w.dequantize_ref(), vec![-16.0, 63.5, 0.25, -1.5]);
        let mut band = vec![0.0; 4];
        w.dequantize_rows_into(0, &mut band);
        assert_eq!(band, w.dequantize_ref());
        assert_eq!(w.packed_zero_point(), Ok(None));
    }

    /// The grouped fast path and the per-element path of `dequantize_rows_into` against the
    /// reference, bit for bit: every width, groups of whole words or not (3-bit), a ragged
    /// last word and group (100 columns), zero points or none, and a band starting mid-matrix.
    #[test]
    fn banded_dequantization_equals_the_reference_for_every_layout() {
        use crate::kernels::packed_q::tests::weight;
        for bits in [2u8, 3, 4, 8] {
            for (cols, group) in [(128, 32), (192, 64), (256, 128), (100, 20), (100, 32)] {
                for symmetric in [true, false] {
                    let rows = 13;
                    let w = weight(bits, rows, cols, group, symmetric);
                    let want = w.dequantize_ref();
                    let mut band = vec![0.0f32; 7 * cols];
                    w.dequantize_rows_into(5, &mut band);
                    let same = band
                        .iter()
                        .zip(&want[5 * cols..12 * cols])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{bits}-bit, {cols} cols, group {group}, sym {symmetric}"
                    );
                }
            }
        }
    }

    #[test]
    fn invalid_parts_are_rejected() {
        let ok = |g_idx| PackedLinear::from_codes(4, 1, 8, 4, &[0; 8], vec![1.0; 2], None, g_idx);
        assert!(ok(None).is_ok());
        assert_eq!(
            ok(Some(vec![0, 0, 0, 0, 1, 1, 1, 2])).unwrap_err(),
            PackError::GroupIndexOutOfRange {
                column: 7,
                group: 2,
                n_groups: 2
            }
        );
        assert!(matches!(
            PackedLinear::from_codes(4, 1, 8, 4, &[0; 8], vec![1.0; 3], None, None),
            Err(PackError::ShapeMismatch {
                what: "weight_scale",
                ..
            })
        ));
        assert!(matches!(
            PackedLinear::from_codes(4, 1, 8, 4, &[0; 8], vec![1.0; 2], Some(vec![8, 0]), None),
            Err(PackError::ValueOutOfRange {
                what: "weight_zero_point",
                ..
            })
        ));
        assert_eq!(
            PackedLinear::from_codes(4, 1, 8, 0, &[0; 8], vec![1.0; 2], None, None).unwrap_err(),
            PackError::ZeroGroupSize
        );
    }
}
