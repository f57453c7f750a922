//! Integer weight-quantization schemes and the scalar definitions every quantizer (RTN,
//! GPTQ, later AWQ) and every consumer (the packed-checkpoint writer, the runtime's kernels)
//! is tested against.
//!
//! # Conventions (compressed-tensors, so transformers/vLLM read our `pack-quantized` output)
//!
//! These follow compressed-tensors (checked against the `vllm-project/compressed-tensors`
//! sources; the reference checkpoints in `../shared/reference/` were made with
//! compressed-tensors 0.19 / llm-compressor 0.14):
//!
//! * **Code range** — `quantization/utils/helpers.py::calculate_range`: for `type: int`,
//!   `q_max = 2^b/2 − 1`, `q_min = −2^b/2`, i.e. the *signed* range `[−2^(b−1), 2^(b−1) − 1]`
//!   for symmetric **and** asymmetric schemes (asymmetric is not `[0, 2^b − 1]` there; the
//!   zero point lives in the same signed range).
//! * **Scale and zero point** — `helpers.py::calculate_qparams`: first `min = min(min, 0)`,
//!   `max = max(max, 0)` (0 must be representable); `bit_range = q_max − q_min = 2^b − 1`.
//!   Symmetric: `scale = max(|min|, |max|) / (bit_range / 2)` (4-bit: `amax / 7.5`), zero point
//!   0. Asymmetric: `scale = (max − min) / bit_range`, `zp = q_min − min / scale`, clamped to
//!   `[q_min, q_max]`, then rounded to the zero-point dtype (int8) with `torch.round`
//!   (half to even). A scale of exactly 0 is replaced by the scale dtype's epsilon (f32 here:
//!   `f32::EPSILON`) *after* the zero point was computed.
//! * **Quantize** — `quantization/lifecycle/forward.py::_quantize` with
//!   `quant_args.py::round_to_quantized_type_args`: `q = round(clamp(x / scale + zp, q_min,
//!   q_max))`, in the weight's float dtype (f32 for GPTQ, whose working precision is f32),
//!   `round` half to even. Because the clamp bounds are integers, clamp-then-round equals
//!   round-then-clamp.
//! * **Dequantize** — `forward.py::_dequantize`: `x = (q − zp) · scale`.
//! * **Groups** — group `k` of a row covers input columns `[k·g, (k+1)·g)`; scales and zero
//!   points are `[out, in / g]` (per-channel: `[out, 1]`). With GPTQ's group activation order
//!   (`actorder: group`) the column → group map is `weight_g_idx` (int32, `[in]`), see
//!   [`QuantizedWeight::g_idx`].
//! * **Storage** — `compressors/quantized_compressors/pack_quantized.py::pack_to_int32` stores
//!   `q + 2^(b−1)` (so unsigned `[0, 2^b − 1]`, and a symmetric scheme's zero sits in the
//!   middle, `2^(b−1)`), `32 / b` values per int32 along the input dimension, first value in
//!   the lowest bits; asymmetric zero points are packed the same way along the output
//!   dimension (`packed_dim=0`). [`QuantScheme::storage_offset`] is that offset; the packing
//!   itself lives with the writer.
//!
//! Scales are kept in f32. llm-compressor casts `weight_scale` to the model dtype when saving
//! (bf16 for bf16 models); for an f32 model, as in the reference runs, that is a no-op, and a
//! writer that stores f32 scales reproduces our dequantized weights exactly.

use serde::{Deserialize, Serialize};

/// Bit widths the quantizers support. 4 and 8 are what compressed-tensors'
/// `pack-quantized` matches automatically and what vLLM's kernels run; 2 and 3 pack with the
/// same `pack_to_int32` (16 and 10 values per word) for our own runtime and experiments.
pub const SUPPORTED_BITS: [u8; 4] = [2, 3, 4, 8];

/// How a weight matrix is quantized: the part of a compressed-tensors `QuantizationArgs`
/// that integer weight-only quantization needs (`type: int`, `strategy: group` or
/// `channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantScheme {
    /// Bits per weight; one of [`SUPPORTED_BITS`].
    pub bits: u8,
    /// Input columns sharing one scale/zero point; `None` = one per output channel (row).
    pub group_size: Option<usize>,
    /// Symmetric (zero point fixed at 0, sign-symmetric grid) or asymmetric (min/max grid
    /// with a per-group zero point).
    pub symmetric: bool,
}

impl QuantScheme {
    /// compressed-tensors' `W4A16`: 4-bit symmetric, group 128.
    pub const W4A16: Self = Self::group(4, 128, true);
    /// compressed-tensors' `W4A16_ASYM`: 4-bit asymmetric, group 128.
    pub const W4A16_ASYM: Self = Self::group(4, 128, false);
    /// 8-bit symmetric per output channel: compressed-tensors' `W8A16` as it was defined up to
    /// the releases our reference uses (`strategy: channel`); newer releases moved the preset
    /// to group 128, which `with_group_size(Some(128))` gives.
    pub const W8A16: Self = Self {
        bits: 8,
        group_size: None,
        symmetric: true,
    };
    /// 8-bit asymmetric per output channel.
    pub const W8A16_ASYM: Self = Self {
        bits: 8,
        group_size: None,
        symmetric: false,
    };
    /// 3-bit symmetric, group 128 (no compressed-tensors preset; named by analogy).
    pub const W3A16: Self = Self::group(3, 128, true);
    /// 3-bit asymmetric, group 128.
    pub const W3A16_ASYM: Self = Self::group(3, 128, false);
    /// 2-bit symmetric, group 128 (recipes usually shrink the group, e.g. to 64).
    pub const W2A16: Self = Self::group(2, 128, true);
    /// 2-bit asymmetric, group 128.
    pub const W2A16_ASYM: Self = Self::group(2, 128, false);

    /// Every named preset, for recipe lookup and for listing the valid names in errors.
    /// `W8A8`'s weights are `W8A16`'s; its per-token int8 activations are recorded by the
    /// plan (see [`is_w8a8`]).
    pub const PRESETS: [(&'static str, Self); 9] = [
        ("W8A8", Self::W8A16),
        ("W4A16", Self::W4A16),
        ("W4A16_ASYM", Self::W4A16_ASYM),
        ("W8A16", Self::W8A16),
        ("W8A16_ASYM", Self::W8A16_ASYM),
        ("W3A16", Self::W3A16),
        ("W3A16_ASYM", Self::W3A16_ASYM),
        ("W2A16", Self::W2A16),
        ("W2A16_ASYM", Self::W2A16_ASYM),
    ];

    /// Whether the scheme can carry W8A8's integer matmul: 8-bit symmetric per channel.
    pub fn is_w8a8_weights(&self) -> bool {
        *self == Self::W8A16
    }

    const fn group(bits: u8, group_size: usize, symmetric: bool) -> Self {
        Self {
            bits,
            group_size: Some(group_size),
            symmetric,
        }
    }

    /// Looks a preset up by name, case-insensitively like compressed-tensors'
    /// `preset_name_to_scheme` (which upper-cases the name).
    pub fn preset(name: &str) -> Option<Self> {
        Self::PRESETS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, s)| s)
    }

    /// The same scheme with another group size; recipes override a preset's group (SmolLM2's
    /// 576-wide inputs need 64 instead of 128).
    pub const fn with_group_size(self, group_size: Option<usize>) -> Self {
        Self { group_size, ..self }
    }

    /// `(q_min, q_max)` = `(−2^(b−1), 2^(b−1) − 1)` for both symmetric and asymmetric schemes
    /// (compressed-tensors `calculate_range`). Bit widths outside `1..=16` are clamped into it
    /// so this never overflows; [`QuantScheme::check`] rejects them before any real use.
    pub fn qrange(&self) -> (i32, i32) {
        let half = 1i32 << (u32::from(self.bits.clamp(1, 16)) - 1);
        (-half, half - 1)
    }

    /// Offset added to a code before packing (`pack_to_int32`: `value + (1 << (b − 1))`),
    /// making codes unsigned `[0, 2^b − 1]`; a symmetric scheme's zero becomes the middle
    /// value `2^(b−1)`.
    pub fn storage_offset(&self) -> i32 {
        -self.qrange().0
    }

    /// Rejects bit widths and group sizes no quantizer can use, independent of any tensor.
    pub fn check(&self) -> Result<(), QuantError> {
        if !SUPPORTED_BITS.contains(&self.bits) {
            return Err(QuantError::UnsupportedBits { bits: self.bits });
        }
        if self.group_size == Some(0) {
            return Err(QuantError::ZeroGroupSize);
        }
        Ok(())
    }

    /// Checks the scheme against a weight with `in_dim` input columns and returns the
    /// effective group size (`in_dim` for per-channel). compressed-tensors requires the group
    /// to divide the input dimension, so a mismatch is an error naming `tensor` and the group
    /// sizes that would work, before any calibration time is spent.
    pub fn validate_for(&self, tensor: &str, in_dim: usize) -> Result<usize, QuantError> {
        self.check()?;
        match self.group_size {
            None => Ok(in_dim),
            Some(g) if in_dim.is_multiple_of(g) => Ok(g),
            Some(g) => Err(QuantError::GroupSizeDoesNotDivide {
                tensor: tensor.to_owned(),
                group_size: g,
                in_dim,
                candidates: workable_group_sizes(in_dim),
            }),
        }
    }
}

/// Group sizes to suggest for an input dimension: its divisors that are multiples of 32
/// (the granularity quantized GEMM kernels are built around), else multiples of 8 (the 4-bit
/// pack factor), else any divisor above 1. For 576: 32, 64, 96, 192, 288, 576.
pub fn workable_group_sizes(in_dim: usize) -> Vec<usize> {
    let divisors: Vec<usize> = (2..=in_dim).filter(|&d| in_dim.is_multiple_of(d)).collect();
    for step in [32, 8] {
        let picked: Vec<usize> = divisors
            .iter()
            .copied()
            .filter(|d| d.is_multiple_of(step))
            .collect();
        if !picked.is_empty() {
            return picked;
        }
    }
    divisors
}

fn join(values: &[usize]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything that can make a quantizer refuse its input. Messages name the tensor where
/// there is one, so a pipeline over hundreds of linears says which one is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// A bit width outside [`SUPPORTED_BITS`] (e.g. a recipe asking for 5).
    #[error("unsupported bit width {bits}: supported widths are 2, 3, 4 and 8")]
    UnsupportedBits { bits: u8 },
    /// `group_size: 0`, which would divide by zero rather than mean per-channel.
    #[error("group size 0 is invalid: use a positive group size, or none for per-channel")]
    ZeroGroupSize,
    /// compressed-tensors needs the group to divide the input dimension (SmolLM2's 576 is not
    /// a multiple of 128); `candidates` are sizes that would.
    #[error(
        "{tensor}: group size {group_size} does not divide the input dimension {in_dim}; \
         group sizes that would work: {}; or per-channel (no group size)",
        join(candidates)
    )]
    GroupSizeDoesNotDivide {
        tensor: String,
        group_size: usize,
        in_dim: usize,
        candidates: Vec<usize>,
    },
    /// A buffer whose length disagrees with the dimensions given with it.
    #[error("{tensor}: {what} has {got} elements, expected {expected}")]
    ShapeMismatch {
        tensor: String,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A weight with no rows or no columns: nothing to quantize, and no group to size.
    #[error("{tensor}: empty weight ({rows} x {cols})")]
    EmptyWeight {
        tensor: String,
        rows: usize,
        cols: usize,
    },
    /// A NaN or infinity in a weight or Hessian: it would poison a whole group's scale or
    /// the factorisation, so it is reported where it is rather than propagated.
    #[error("{tensor}: {what} has a non-finite value at flat index {index}")]
    NonFinite {
        tensor: String,
        what: &'static str,
        index: usize,
    },
    /// A `g_idx` entry naming a group that has no scale.
    #[error(
        "{tensor}: g_idx maps column {column} to group {group}, but there are {n_groups} groups"
    )]
    GroupIndexOutOfRange {
        tensor: String,
        column: usize,
        group: i64,
        n_groups: usize,
    },
    /// An option value no run can use (block size 0, negative dampening, codes out of range).
    #[error("{tensor}: invalid option {option}: {reason}")]
    InvalidOption {
        tensor: String,
        option: &'static str,
        reason: String,
    },
    /// The Hessian stayed non-positive-definite through all dampening retries (a negative or
    /// non-symmetric accumulation, not merely too few samples).
    #[error(
        "{tensor}: Hessian is not positive definite even with dampening {last_dampening} \
         after {attempts} attempts ({cause})"
    )]
    HessianNotPositiveDefinite {
        tensor: String,
        attempts: u32,
        last_dampening: f64,
        cause: crate::linalg::LinalgError,
    },
    /// A size inconsistency inside a quantizer's own linear algebra: a bug, reported instead
    /// of panicking mid-pipeline.
    #[error("{tensor}: internal linear-algebra error: {cause}")]
    Linalg {
        tensor: String,
        cause: crate::linalg::LinalgError,
    },
}

/// A borrowed `[rows, cols]` row-major f32 weight (`[out, in]` of a linear) with the name
/// used in errors. Constructing one checks the shape and that every value is finite, so the
/// quantizers can rely on both.
#[derive(Debug, Clone, Copy)]
pub struct WeightMatrix<'a> {
    name: &'a str,
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> WeightMatrix<'a> {
    /// Wraps `data` as a `rows × cols` matrix named `name`; errors on a length mismatch, an
    /// empty matrix or a NaN/infinite value (which would poison a whole group's scale).
    pub fn new(
        name: &'a str,
        data: &'a [f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantError> {
        if rows == 0 || cols == 0 {
            return Err(QuantError::EmptyWeight {
                tensor: name.to_owned(),
                rows,
                cols,
            });
        }
        let expected = rows.saturating_mul(cols);
        if data.len() != expected {
            return Err(QuantError::ShapeMismatch {
                tensor: name.to_owned(),
                what: "weight",
                expected,
                got: data.len(),
            });
        }
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite {
                tensor: name.to_owned(),
                what: "weight",
                index,
            });
        }
        Ok(Self {
            name,
            data,
            rows,
            cols,
        })
    }

    /// Name used in error messages.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The `rows × cols` values, row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Output channels.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input channels.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Per-group scales and zero points, `[rows, n_groups]` row-major each: the
/// `weight_scale` / `weight_zero_point` tensors of compressed-tensors before packing.
#[derive(Debug, Clone, PartialEq)]
pub struct QParams {
    /// Scales, f32 (see the module docs on storage dtype).
    pub scale: Vec<f32>,
    /// Zero points in the signed code range, int8 as compressed-tensors' `zp_dtype`; all 0
    /// for symmetric schemes.
    pub zero: Vec<i8>,
    /// Output channels.
    pub rows: usize,
    /// Groups per row (1 for per-channel).
    pub n_groups: usize,
}

impl QParams {
    /// All-zero parameters of the given shape, to be filled group by group.
    pub fn zeros(rows: usize, n_groups: usize) -> Self {
        Self {
            scale: vec![0.0; rows * n_groups],
            zero: vec![0; rows * n_groups],
            rows,
            n_groups,
        }
    }

    /// `(scale, zero)` of `group` in `row`, or `None` out of range.
    pub fn get(&self, row: usize, group: usize) -> Option<(f32, i32)> {
        if row >= self.rows || group >= self.n_groups {
            return None;
        }
        let i = row * self.n_groups + group;
        Some((*self.scale.get(i)?, i32::from(*self.zero.get(i)?)))
    }
}

/// A quantized weight: integer codes plus what is needed to dequantize them. The unit the
/// packed-checkpoint writer consumes and that RTN and GPTQ both produce.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    /// The scheme the codes were made with.
    pub scheme: QuantScheme,
    /// Output channels.
    pub rows: usize,
    /// Input channels.
    pub cols: usize,
    /// Effective group size (`cols` for per-channel).
    pub group_size: usize,
    /// Codes `[rows, cols]` in the original column order, each in `scheme.qrange()` (signed,
    /// before the packing offset). i8 is compressed-tensors' pre-packing dtype and a quarter
    /// of the memory of i32 for the large MLP weights.
    pub codes: Vec<i8>,
    /// Scales and zero points, `[rows, cols / group_size]`.
    pub qparams: QParams,
    /// Column → group map (compressed-tensors `weight_g_idx`), present only when groups are
    /// not contiguous column ranges (GPTQ with activation order and dynamic groups). `None`
    /// means column `c` is in group `c / group_size`.
    pub g_idx: Option<Vec<i32>>,
}

impl QuantizedWeight {
    /// The compressed-tensors `pack-quantized` form the writer stores and the runtime runs
    /// (zero points only for asymmetric schemes, `g_idx` when groups are not contiguous).
    pub fn to_packed(
        &self,
    ) -> Result<lmq_runtime::packed::PackedLinear, lmq_runtime::packed::PackError> {
        let zero = (!self.scheme.symmetric).then(|| self.qparams.zero.clone());
        lmq_runtime::packed::PackedLinear::from_codes(
            self.scheme.bits,
            self.rows,
            self.cols,
            self.group_size,
            &self.codes,
            self.qparams.scale.clone(),
            zero,
            self.g_idx.clone(),
        )
    }

    /// Groups per row.
    pub fn n_groups(&self) -> usize {
        self.qparams.n_groups
    }

    /// Group of input column `col` (through `g_idx` when present).
    pub fn group_of(&self, col: usize) -> usize {
        match &self.g_idx {
            Some(g) => g.get(col).map_or(0, |&v| v.max(0) as usize),
            None => col / self.group_size.max(1),
        }
    }

    /// Checks that all parts agree in size and every group index and code is in range, so a
    /// weight assembled elsewhere (a loaded checkpoint) can be dequantized without panics.
    pub fn validate(&self, tensor: &str) -> Result<(), QuantError> {
        self.scheme.check()?;
        let mismatch = |what, expected, got| QuantError::ShapeMismatch {
            tensor: tensor.to_owned(),
            what,
            expected,
            got,
        };
        if self.rows == 0 || self.cols == 0 {
            return Err(QuantError::EmptyWeight {
                tensor: tensor.to_owned(),
                rows: self.rows,
                cols: self.cols,
            });
        }
        if self.group_size == 0 || !self.cols.is_multiple_of(self.group_size) {
            return Err(QuantError::GroupSizeDoesNotDivide {
                tensor: tensor.to_owned(),
                group_size: self.group_size,
                in_dim: self.cols,
                candidates: workable_group_sizes(self.cols),
            });
        }
        let n_groups = self.cols / self.group_size;
        if self.codes.len() != self.rows * self.cols {
            return Err(mismatch("codes", self.rows * self.cols, self.codes.len()));
        }
        if self.qparams.rows != self.rows || self.qparams.n_groups != n_groups {
            return Err(mismatch(
                "qparams shape (rows x groups)",
                self.rows * n_groups,
                self.qparams.rows * self.qparams.n_groups,
            ));
        }
        if self.qparams.scale.len() != self.rows * n_groups {
            return Err(mismatch(
                "scale",
                self.rows * n_groups,
                self.qparams.scale.len(),
            ));
        }
        if self.qparams.zero.len() != self.rows * n_groups {
            return Err(mismatch(
                "zero point",
                self.rows * n_groups,
                self.qparams.zero.len(),
            ));
        }
        if let Some(g_idx) = &self.g_idx {
            if g_idx.len() != self.cols {
                return Err(mismatch("g_idx", self.cols, g_idx.len()));
            }
            if let Some((column, &group)) = g_idx
                .iter()
                .enumerate()
                .find(|&(_, &g)| g < 0 || g as usize >= n_groups)
            {
                return Err(QuantError::GroupIndexOutOfRange {
                    tensor: tensor.to_owned(),
                    column,
                    group: i64::from(group),
                    n_groups,
                });
            }
        }
        let (qmin, qmax) = self.scheme.qrange();
        if let Some(index) = self
            .codes
            .iter()
            .position(|&q| i32::from(q) < qmin || i32::from(q) > qmax)
        {
            return Err(QuantError::InvalidOption {
                tensor: tensor.to_owned(),
                option: "codes",
                reason: format!(
                    "code {} at flat index {index} is outside [{qmin}, {qmax}]",
                    self.codes[index]
                ),
            });
        }
        Ok(())
    }
}

/// Whether a preset name asks for int8 activations as well (compressed-tensors' `W8A8`:
/// dynamic per-token symmetric int8 inputs).
pub fn is_w8a8(preset: &str) -> bool {
    preset.eq_ignore_ascii_case("W8A8")
}

/// Scale and zero point for a group whose values span `[min, max]`: compressed-tensors'
/// `calculate_qparams` for `type: int` (see the module docs for each step). Returns
/// `(scale, zero)` with `zero` in the signed code range (always 0 when symmetric).
///
/// An all-zero group gets scale `f32::EPSILON`; compressed-tensors computes its asymmetric
/// zero point as `q_min − 0/0` = NaN and casts that to int8, which is not well defined, so
/// here it is 0. Any zero point reconstructs 0.0 exactly, so the choice does not change a
/// dequantized value.
pub fn compute_qparams(min: f32, max: f32, scheme: &QuantScheme) -> (f32, i32) {
    let min = min.min(0.0);
    let max = max.max(0.0);
    let (qmin, qmax) = scheme.qrange();
    let bit_range = (qmax - qmin) as f32;
    if scheme.symmetric {
        let amax = min.abs().max(max.abs());
        let scale = amax / (bit_range / 2.0);
        (if scale == 0.0 { f32::EPSILON } else { scale }, 0)
    } else {
        let scale = (max - min) / bit_range;
        if scale == 0.0 {
            return (f32::EPSILON, 0);
        }
        let zp = qmin as f32 - min / scale;
        let zp = zp.clamp(qmin as f32, qmax as f32).round_ties_even() as i32;
        (scale, zp)
    }
}

/// Integer code of `w`: `round_half_even(clamp(w / scale + zero, q_min, q_max))` in f32, as
/// compressed-tensors' `_quantize`. A NaN input gives 0 (callers reject NaN weights first).
pub fn quantize_value(w: f32, scale: f32, zero: i32, scheme: &QuantScheme) -> i32 {
    let (qmin, qmax) = scheme.qrange();
    let x = w / scale + zero as f32;
    x.clamp(qmin as f32, qmax as f32).round_ties_even() as i32
}

/// Real value of code `q`: `(q − zero) · scale` in f32, as compressed-tensors' `_dequantize`
/// (the integer difference is exact in f32 for any code width used here).
pub fn dequantize_value(q: i32, scale: f32, zero: i32) -> f32 {
    (q - zero) as f32 * scale
}

/// Min and max of a non-empty slice (`(0, 0)` for an empty one), the statistics
/// [`compute_qparams`] takes; as compressed-tensors' min-max observer (`torch.amin/amax` over
/// the group).
pub fn min_max(values: &[f32]) -> (f32, f32) {
    let mut it = values.iter().copied();
    let Some(first) = it.next() else {
        return (0.0, 0.0);
    };
    it.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_range_is_signed_for_both_symmetric_and_asymmetric() {
        for (bits, lo, hi) in [(2, -2, 1), (3, -4, 3), (4, -8, 7), (8, -128, 127)] {
            for symmetric in [true, false] {
                let s = QuantScheme {
                    bits,
                    group_size: None,
                    symmetric,
                };
                assert_eq!(s.qrange(), (lo, hi), "bits {bits} symmetric {symmetric}");
                assert_eq!(s.storage_offset(), -lo);
            }
        }
    }

    #[test]
    fn quantize_clamps_to_the_code_range() {
        let s = QuantScheme::W4A16;
        assert_eq!(quantize_value(1e6, 0.1, 0, &s), 7);
        assert_eq!(quantize_value(-1e6, 0.1, 0, &s), -8);
        let a = QuantScheme::W4A16_ASYM;
        assert_eq!(quantize_value(1e6, 0.1, -3, &a), 7);
        assert_eq!(quantize_value(-1e6, 0.1, -3, &a), -8);
    }

    #[test]
    fn rounding_is_half_to_even_like_torch_round() {
        let s = QuantScheme::W8A16;
        assert_eq!(quantize_value(0.5, 1.0, 0, &s), 0);
        assert_eq!(quantize_value(1.5, 1.0, 0, &s), 2);
        assert_eq!(quantize_value(2.5, 1.0, 0, &s), 2);
        assert_eq!(quantize_value(-0.5, 1.0, 0, &s), 0);
        assert_eq!(quantize_value(-1.5, 1.0, 0, &s), -2);
        assert_eq!(quantize_value(0.51, 1.0, 0, &s), 1);
    }

    #[test]
    fn symmetric_scale_is_amax_over_half_the_bit_range_and_zero_is_the_middle() {
        let s = QuantScheme::W4A16;
        let (scale, zero) = compute_qparams(-1.0, 2.0, &s);
        assert_eq!(scale, 2.0 / 7.5);
        assert_eq!(zero, 0);
        // 0 is the middle of the grid: code 0 signed, 2^(b-1) once offset for storage.
        assert_eq!(quantize_value(0.0, scale, zero, &s), 0);
        assert_eq!(quantize_value(0.0, scale, zero, &s) + s.storage_offset(), 8);
        assert_eq!(quantize_value(2.0, scale, zero, &s), 7);
        assert_eq!(dequantize_value(7, scale, zero), 7.0 * scale);
        // With an exactly representable scale (amax 7.5 -> 1.0): +amax lands on 7.5 and is
        // clamped to 7; -amax lands on -7.5 and rounds (half to even) to -8.
        let (scale, zero) = compute_qparams(-7.5, 3.0, &s);
        assert_eq!(scale, 1.0);
        assert_eq!(quantize_value(7.5, scale, zero, &s), 7);
        assert_eq!(quantize_value(-7.5, scale, zero, &s), -8);
        // Other widths: amax / ((2^b - 1) / 2).
        for (bits, half_range) in [(2u8, 1.5f32), (3, 3.5), (8, 127.5)] {
            let s = QuantScheme {
                bits,
                group_size: None,
                symmetric: true,
            };
            assert_eq!(compute_qparams(-3.0, 1.0, &s).0, 3.0 / half_range);
        }
    }

    #[test]
    fn asymmetric_zero_point_comes_from_min_and_max() {
        let s = QuantScheme::W4A16_ASYM;
        let (scale, zero) = compute_qparams(-1.0, 3.0, &s);
        assert_eq!(scale, 4.0 / 15.0);
        // -8 - (-1 / (4/15)) = -8 + 3.75 = -4.25 -> -4
        assert_eq!(zero, -4);
        assert_eq!(quantize_value(-1.0, scale, zero, &s), -8);
        assert_eq!(quantize_value(3.0, scale, zero, &s), 7);
        assert_eq!(dequantize_value(-8, scale, zero), -4.0 * scale);
        // An all-positive range is widened to include 0: zero point at q_min.
        let (scale, zero) = compute_qparams(0.5, 2.0, &s);
        assert_eq!(scale, 2.0 / 15.0);
        assert_eq!(zero, -8);
        // All-negative: zero point at q_max.
        let (_, zero) = compute_qparams(-2.0, -0.5, &s);
        assert_eq!(zero, 7);
        // The zero point is rounded half to even: -8 - (-2.5) = -5.5 -> -6.
        let (scale, zero) = compute_qparams(-2.5, 12.5, &s);
        assert_eq!(scale, 1.0);
        assert_eq!(zero, -6);
    }

    #[test]
    fn zero_is_exactly_representable_for_any_range() {
        for symmetric in [true, false] {
            for bits in SUPPORTED_BITS {
                let s = QuantScheme {
                    bits,
                    group_size: None,
                    symmetric,
                };
                for (lo, hi) in [(-1.0f32, 3.0f32), (-0.37, 0.011), (0.2, 9.0), (-5.0, -1.0)] {
                    let (scale, zero) = compute_qparams(lo, hi, &s);
                    let q = quantize_value(0.0, scale, zero, &s);
                    assert_eq!(dequantize_value(q, scale, zero), 0.0);
                }
            }
        }
    }

    #[test]
    fn an_all_zero_group_gets_epsilon_scale_and_reconstructs_zero() {
        for s in [QuantScheme::W4A16, QuantScheme::W4A16_ASYM] {
            let (scale, zero) = compute_qparams(0.0, 0.0, &s);
            assert_eq!(scale, f32::EPSILON);
            assert_eq!(zero, 0);
            assert_eq!(
                dequantize_value(quantize_value(0.0, scale, zero, &s), scale, zero),
                0.0
            );
        }
    }

    #[test]
    fn non_dividing_group_size_names_the_tensor_and_the_sizes_that_work() {
        let err = QuantScheme::W4A16
            .validate_for("model.layers.0.self_attn.q_proj.weight", 576)
            .unwrap_err();
        let QuantError::GroupSizeDoesNotDivide { ref candidates, .. } = err else {
            panic!("wrong error {err:?}");
        };
        assert_eq!(candidates, &[32, 64, 96, 192, 288, 576]);
        let msg = err.to_string();
        assert!(
            msg.contains("model.layers.0.self_attn.q_proj.weight"),
            "{msg}"
        );
        assert!(msg.contains("group size 128"), "{msg}");
        assert!(msg.contains("32, 64, 96, 192, 288, 576"), "{msg}");
        assert_eq!(
            QuantScheme::W4A16
                .with_group_size(Some(64))
                .validate_for("x", 576),
            Ok(64)
        );
        assert_eq!(QuantScheme::W8A16.validate_for("x", 576), Ok(576));
        assert_eq!(workable_group_sizes(24), vec![8, 24]);
        assert_eq!(workable_group_sizes(9), vec![3, 9]);
    }

    #[test]
    fn bad_schemes_are_rejected() {
        let s = QuantScheme {
            bits: 5,
            group_size: None,
            symmetric: true,
        };
        assert_eq!(s.check(), Err(QuantError::UnsupportedBits { bits: 5 }));
        assert_eq!(
            QuantScheme::W4A16.with_group_size(Some(0)).check(),
            Err(QuantError::ZeroGroupSize)
        );
        // qrange stays total for nonsense widths.
        let z = QuantScheme {
            bits: 0,
            group_size: None,
            symmetric: true,
        };
        assert_eq!(z.qrange(), (-1, 0));
    }

    #[test]
    fn presets_resolve_case_insensitively() {
        assert_eq!(QuantScheme::preset("w4a16"), Some(QuantScheme::W4A16));
        assert_eq!(
            QuantScheme::preset("W4A16_ASYM"),
            Some(QuantScheme::W4A16_ASYM)
        );
        assert_eq!(QuantScheme::preset("W8A16").unwrap().group_size, None);
        assert_eq!(QuantScheme::preset("W5A16"), None);
        for (_, s) in QuantScheme::PRESETS {
            assert!(s.check().is_ok());
        }
    }

    #[test]
    fn weight_matrix_checks_shape_and_finiteness() {
        let d = [1.0f32, 2.0, 3.0, 4.0];
        assert!(WeightMatrix::new("w", &d, 2, 2).is_ok());
        assert!(matches!(
            WeightMatrix::new("w", &d, 3, 2),
            Err(QuantError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            WeightMatrix::new("w", &d, 0, 2),
            Err(QuantError::EmptyWeight { .. })
        ));
        let bad = [1.0f32, f32::NAN];
        assert_eq!(
            WeightMatrix::new("w", &bad, 1, 2).unwrap_err(),
            QuantError::NonFinite {
                tensor: "w".into(),
                what: "weight",
                index: 1
            }
        );
    }
}
