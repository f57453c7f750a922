//! compressed-tensors' `int-quantized` layout for 8-bit weights (`format: int-quantized`,
//! what llm-compressor writes for W8A8): the codes are stored unpacked as an int8 `weight`
//! tensor `[out, in]`, with `weight_scale` `[out, 1]` (one scale per output channel,
//! symmetric, no zero point). The config group's `input_activations` says the inputs are
//! quantized at run time: 8-bit, one scale per token (`strategy: token`, `dynamic: true`),
//! symmetric or, with `symmetric: false`, with a zero point per token as well
//! ([`ActQuant`]); [`crate::kernels::int8`] does that and multiplies in integers.
//!
//! Dequantize (`forward.py::_dequantize`): `w = q · scale`.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::PackError;

/// How a W8A8 linear's inputs are quantized per token at run time: compressed-tensors'
/// `input_activations.symmetric`. Symmetric codes (±127 around zero) waste half the range on
/// a token whose values lean one way (one large outlier channel of one sign, common after
/// a norm); a zero point per token (vLLM's `azp` path) spends all 256 codes on the token's
/// own range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActQuant {
    /// `symmetric: true`: `scale = absmax / 127`, no zero point.
    #[default]
    Symmetric,
    /// `symmetric: false`: `scale = (max − min) / 255` over the token's values and zero,
    /// zero point `round(−128 − min / scale)`.
    Asymmetric,
}

impl ActQuant {
    /// The mode a config's `input_activations.symmetric` names.
    pub fn from_symmetric(symmetric: bool) -> Self {
        match symmetric {
            true => Self::Symmetric,
            false => Self::Asymmetric,
        }
    }

    /// compressed-tensors' `symmetric` flag for this mode.
    pub fn symmetric(self) -> bool {
        self == Self::Symmetric
    }
}

/// An int8 weight with per-output-channel scales, as the runtime keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Linear {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]` codes, full int8 range.
    pub codes: Vec<i8>,
    /// `[rows]` scales.
    pub scale: Vec<f32>,
    /// How the inputs are quantized per token (the checkpoint config's; symmetric unless it
    /// says otherwise).
    pub activations: ActQuant,
    /// The codes rearranged for the VNNI kernel, built on first use (see [`Int8Tiles`]).
    tiles: TilesCache,
}

/// Rows of one tile: a 64-byte line holds 4 consecutive columns of this many rows.
pub const TILE_ROWS: usize = 16;

/// Tiles of rows the VNNI kernel multiplies together (its band of output rows is
/// `TILE_ROWS · BAND_TILES`); the rows are padded with zero codes to a whole band.
pub const BAND_TILES: usize = 3;

/// One cache line of [`Int8Tiles`]: `[TILE_ROWS][4]` codes.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
pub struct TileLine(pub [i8; 64]);

/// The codes as `vpdpbusd` reads them: line `tile · groups + g` holds columns `4g..4g + 4`
/// of rows `16·tile..16·tile + 16`, row-major (`line[4j + i] = codes[16·tile + j][4g + i]`),
/// so one aligned load against four broadcast activation bytes gives 16 rows' partial
/// sums with no horizontal reduction. Rows past `rows` (up to a whole band) and columns past
/// `cols` (up to a multiple of 4) are zero, so they add nothing. `row_sum[o] = Σ_c
/// codes[o][c]`: the kernel's unsigned activations are `code + 128` and their zero point is
/// `z`, so `(128 + z) · row_sum[o]` is what comes off row `o`'s sum. A runtime layout only: files keep the `[rows, cols]` codes.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Tiles {
    /// Column groups of 4 (`cols` rounded up to 4, divided by 4).
    pub groups: usize,
    /// Tiles of rows, a multiple of [`BAND_TILES`].
    pub tiles: usize,
    pub lines: Vec<TileLine>,
    /// `[tiles · 16]`, zero for padding rows.
    pub row_sum: Vec<i32>,
}

impl Int8Tiles {
    /// Rearranges `w`'s codes.
    pub fn new(w: &Int8Linear) -> Self {
        let groups = w.cols.div_ceil(4);
        let tiles = w.rows.div_ceil(TILE_ROWS * BAND_TILES) * BAND_TILES;
        let mut lines = vec![TileLine([0; 64]); tiles * groups];
        let mut row_sum = vec![0i32; tiles * TILE_ROWS];
        lines
            .par_chunks_mut(groups.max(1))
            .zip(row_sum.par_chunks_mut(TILE_ROWS))
            .enumerate()
            .for_each(|(tile, (lines, sums))| {
                for (j, sum) in sums.iter_mut().enumerate() {
                    let o = tile * TILE_ROWS + j;
                    if o >= w.rows {
                        break;
                    }
                    let row = &w.codes[o * w.cols..(o + 1) * w.cols];
                    *sum = row.iter().map(|&c| i32::from(c)).sum::<i32>();
                    for (c, &v) in row.iter().enumerate() {
                        lines[c / 4].0[4 * j + c % 4] = v;
                    }
                }
            });
        Self {
            groups,
            tiles,
            lines,
            row_sum,
        }
    }

    /// The code of row `o`, column `c` (zero in the padding): the layout's definition.
    pub fn code(&self, o: usize, c: usize) -> i8 {
        self.lines[(o / TILE_ROWS) * self.groups + c / 4].0[4 * (o % TILE_ROWS) + c % 4]
    }
}

/// A lazily built [`Int8Tiles`]. It is derived from the codes, so two weights with the
/// same codes are equal whether or not either has built it.
#[derive(Debug, Clone, Default)]
struct TilesCache(OnceLock<Int8Tiles>);

impl PartialEq for TilesCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Int8Linear {
    /// Checks the parts against the shape.
    pub fn new(
        rows: usize,
        cols: usize,
        codes: Vec<i8>,
        scale: Vec<f32>,
    ) -> Result<Self, PackError> {
        if codes.len() != rows * cols {
            return Err(PackError::ShapeMismatch {
                what: "int8 weight",
                expected: rows * cols,
                got: codes.len(),
            });
        }
        if scale.len() != rows {
            return Err(PackError::ShapeMismatch {
                what: "weight_scale (one per output channel)",
                expected: rows,
                got: scale.len(),
            });
        }
        Ok(Self {
            rows,
            cols,
            codes,
            scale,
            activations: ActQuant::Symmetric,
            tiles: TilesCache::default(),
        })
    }

    /// The same weight with its inputs quantized per token as `activations` says.
    pub fn with_activations(mut self, activations: ActQuant) -> Self {
        self.activations = activations;
        self
    }

    /// The codes in the VNNI kernel's layout, built (in parallel, once) on first use: the
    /// weight then takes twice its code bytes in memory.
    pub fn tiles(&self) -> &Int8Tiles {
        self.tiles.0.get_or_init(|| Int8Tiles::new(self))
    }

    /// Plain definition: `w[o][c] = codes[o][c] · scale[o]`.
    pub fn dequantize_ref(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(o, row)| self.dequantize_rows_into(o, row));
        out
    }

    /// Row `o` dequantized into `out` (`[cols]`): embedding lookups of a tied head.
    pub fn dequantize_rows_into(&self, o: usize, out: &mut [f32]) {
        let s = self.scale[o];
        for (v, &q) in out
            .iter_mut()
            .zip(&self.codes[o * self.cols..(o + 1) * self.cols])
        {
            *v = f32::from(q) * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantize_is_code_times_row_scale_and_shapes_are_checked() {
        let w = Int8Linear::new(2, 3, vec![1, -128, 127, 0, 2, -3], vec![0.5, 2.0]).unwrap();
        assert_eq!(w.dequantize_ref(), vec![0.5, -64.0, 63.5, 0.0, 4.0, -6.0]);
        assert!(Int8Linear::new(2, 3, vec![0; 5], vec![1.0; 2]).is_err());
        assert!(Int8Linear::new(2, 3, vec![0; 6], vec![1.0; 3]).is_err());
    }

    #[test]
    fn tiles_hold_every_code_once_and_zero_padding() {
        for (rows, cols) in [(1, 1), (16, 4), (17, 7), (50, 64), (97, 130)] {
            let codes: Vec<i8> = (0..rows * cols)
                .map(|i| ((i * 37 + 11) % 256) as u8 as i8)
                .collect();
            let w = Int8Linear::new(rows, cols, codes, vec![1.0; rows]).unwrap();
            let t = w.tiles();
            assert_eq!(t.tiles % BAND_TILES, 0);
            assert!(t.tiles * TILE_ROWS >= rows && t.groups * 4 >= cols);
            for o in 0..t.tiles * TILE_ROWS {
                for c in 0..t.groups * 4 {
                    let want = if o < rows && c < cols {
                        w.codes[o * cols + c]
                    } else {
                        0
                    };
                    assert_eq!(t.code(o, c), want, "{rows}x{cols} ({o},{c})");
                }
                let sum: i32 = match o < rows {
                    true => w.codes[o * cols..(o + 1) * cols]
                        .iter()
                        .map(|&c| i32::from(c))
                        .sum(),
                    false => 0,
                };
                assert_eq!(t.row_sum[o], sum);
            }
            let nonzero = t.lines.iter().flat_map(|l| l.0).filter(|&v| v != 0).count();
            let want = w.codes.iter().filter(|&&v| v != 0).count();
            assert_eq!(nonzero, want, "every code exactly once");
        }
    }
}
