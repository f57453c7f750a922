//! f32 weights `[n, k]` held as row panels: each block of [`PANEL_ROWS`] rows stores its
//! 8-column chunks side by side, so the few-row kernel (a decode step, a speculative
//! verification) reads a block as one sequential stream. Reading the same 4 rows as 4
//! streams 2304 bytes apart (SmolLM2's rows), SmolLM2's lm_head GEMV took 6.1 ms for one
//! row and 7.1 ms for two on 2 Zen 3 cores; as panels 4.6 and 5.0 ms (`cargo run --release
//! -p lmq-runtime --example gemv_rows_bench`).
//!
//! Layout, for `k8 = k − k mod 8`:
//! - full blocks `b < n / PANEL_ROWS` first: element `(row, col)` with `col < k8` at
//!   `b·PANEL_ROWS·k8 + (col / 8)·8·PANEL_ROWS + (row mod PANEL_ROWS)·8 + col mod 8`;
//! - then the last `n mod PANEL_ROWS` rows, row-major, `k8` columns each;
//! - then every row's tail (`col ≥ k8`), `[n, k − k8]` row-major.
//!
//! [`PanelF32::offset`] is that definition; packing, unpacking and the kernels follow it.

/// Rows per panel block: the few-row kernel's weight tile, and a divisor of every
/// projection width of the supported models.
pub const PANEL_ROWS: usize = 4;

/// An `[n, k]` f32 matrix in panel layout (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct PanelF32 {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

/// Where one tile of weight rows sits in a matrix's storage: row `a`'s chunk `c` (8 floats)
/// starts at `start + a·row_stride + c·chunk_stride`, and its tail column `i` at
/// `tail + a·tail_stride + i`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileLayout {
    pub start: usize,
    pub row_stride: usize,
    pub chunk_stride: usize,
    pub tail: usize,
    pub tail_stride: usize,
}

impl TileLayout {
    /// Rows `o..` of a row-major `[_, k]` matrix.
    pub(crate) fn row_major(o: usize, k: usize) -> Self {
        Self {
            start: o * k,
            row_stride: k,
            chunk_stride: 8,
            tail: o * k + k / 8 * 8,
            tail_stride: k,
        }
    }
}

impl PanelF32 {
    /// Packs row-major `[rows, cols]` data.
    pub fn from_row_major(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "weight shape");
        let mut p = Self {
            data: vec![0.0f32; w.len()],
            rows,
            cols,
        };
        let k8 = cols / 8 * 8;
        for (r, src) in w.chunks_exact(cols.max(1)).enumerate().take(rows) {
            let t = p.tile_layout(r);
            for c in 0..k8 / 8 {
                p.data[t.start + c * t.chunk_stride..][..8].copy_from_slice(&src[c * 8..][..8]);
            }
            p.data[t.tail..][..cols - k8].copy_from_slice(&src[k8..]);
        }
        p
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Where element `(row, col)` is stored: the layout's definition.
    pub fn offset(&self, row: usize, col: usize) -> usize {
        assert!(
            row < self.rows && col < self.cols,
            "({row}, {col}) outside the matrix"
        );
        Self::offset_in(self.rows, self.cols, row, col)
    }

    fn offset_in(rows: usize, cols: usize, row: usize, col: usize) -> usize {
        let k8 = cols / 8 * 8;
        if col >= k8 {
            return rows * k8 + row * (cols - k8) + (col - k8);
        }
        let full = rows / PANEL_ROWS * PANEL_ROWS;
        if row >= full {
            return full * k8 + (row - full) * k8 + col;
        }
        let (b, a) = (row / PANEL_ROWS, row % PANEL_ROWS);
        b * PANEL_ROWS * k8 + (col / 8) * 8 * PANEL_ROWS + a * 8 + col % 8
    }

    /// Element `(row, col)` (the scalar reference the bulk copies are tested against).
    pub fn get(&self, row: usize, col: usize) -> f32 {
        self.data[self.offset(row, col)]
    }

    /// The storage, in the layout above.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Row `row` into `dst` (`cols` values): an embedding lookup.
    pub fn row_into(&self, row: usize, dst: &mut [f32]) {
        self.rows_into(row, 1, dst);
    }

    /// Rows `first..first + count` into `dst`, `[count, cols]` row-major: a GEMM's weight
    /// band, or the whole matrix for a backend that wants the checkpoint layout.
    pub fn rows_into(&self, first: usize, count: usize, dst: &mut [f32]) {
        let k = self.cols;
        assert!(first + count <= self.rows, "rows outside the matrix");
        assert_eq!(dst.len(), count * k, "destination shape");
        let k8 = k / 8 * 8;
        for (i, out) in dst.chunks_exact_mut(k).enumerate() {
            let t = self.tile_layout(first + i);
            for c in 0..k8 / 8 {
                out[c * 8..][..8].copy_from_slice(&self.data[t.start + c * t.chunk_stride..][..8]);
            }
            out[k8..].copy_from_slice(&self.data[t.tail..][..k - k8]);
        }
    }

    /// The whole matrix row-major, `[rows, cols]`.
    pub fn to_row_major(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.data.len()];
        self.rows_into(0, self.rows, &mut out);
        out
    }

    /// The tile starting at row `o`: a whole panel block when `o` begins one (rows
    /// `o..o + PANEL_ROWS`), otherwise the single row `o`.
    pub(crate) fn tile_layout(&self, o: usize) -> TileLayout {
        let (n, k) = (self.rows, self.cols);
        let k8 = k / 8 * 8;
        let full = n / PANEL_ROWS * PANEL_ROWS;
        let tail = n * k8 + o * (k - k8);
        if o < full {
            TileLayout {
                start: (o / PANEL_ROWS) * PANEL_ROWS * k8 + (o % PANEL_ROWS) * 8,
                row_stride: 8,
                chunk_stride: 8 * PANEL_ROWS,
                tail,
                tail_stride: k - k8,
            }
        } else {
            TileLayout {
                start: full * k8 + (o - full) * k8,
                row_stride: k8,
                chunk_stride: 8,
                tail,
                tail_stride: k - k8,
            }
        }
    }

    /// Rows that begin full panel blocks end here; rows past it are single.
    pub(crate) fn full_block_rows(&self) -> usize {
        self.rows / PANEL_ROWS * PANEL_ROWS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect()
    }

    /// Every element lands where the definition says, each slot exactly once, and the bulk
    /// copies read it back.
    #[test]
    fn packing_follows_the_definition_and_round_trips() {
        for (rows, cols) in [
            (1, 1),
            (4, 8),
            (5, 17),
            (9, 576),
            (3, 7),
            (8, 24),
            (13, 100),
        ] {
            let w = matrix(rows, cols);
            let p = PanelF32::from_row_major(&w, rows, cols);
            let mut seen = vec![false; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    let at = p.offset(r, c);
                    assert!(!seen[at], "{rows}×{cols}: slot {at} used twice");
                    seen[at] = true;
                    assert_eq!(p.get(r, c), w[r * cols + c]);
                }
            }
            assert_eq!(p.to_row_major(), w, "{rows}×{cols}");
            let mut row = vec![0.0f32; cols];
            p.row_into(rows - 1, &mut row);
            assert_eq!(row, w[(rows - 1) * cols..]);
        }
    }

    /// A tile's strides address the same elements as the definition.
    #[test]
    fn tile_layouts_address_the_definitions_elements() {
        let (rows, cols) = (10, 44);
        let p = PanelF32::from_row_major(&matrix(rows, cols), rows, cols);
        let k8 = cols / 8 * 8;
        let mut o = 0;
        while o < rows {
            let t = p.tile_layout(o);
            let n = if o < p.full_block_rows() {
                PANEL_ROWS
            } else {
                1
            };
            for a in 0..n {
                for c in 0..k8 {
                    let at = t.start + a * t.row_stride + (c / 8) * t.chunk_stride + c % 8;
                    assert_eq!(at, p.offset(o + a, c), "row {} col {c}", o + a);
                }
                for i in 0..cols - k8 {
                    assert_eq!(t.tail + a * t.tail_stride + i, p.offset(o + a, k8 + i));
                }
            }
            o += n;
        }
    }
}
