//! compressed-tensors' `int-quantized` layout for 8-bit weights (`format: int-quantized`,
//! what llm-compressor writes for W8A8): the codes are stored unpacked as an int8 `weight`
//! tensor `[out, in]`, with `weight_scale` `[out, 1]` (one scale per output channel,
//! symmetric, no zero point). The config group's `input_activations` says the inputs are
//! quantized at run time: 8-bit, symmetric, one scale per token (`strategy: token`,
//! `dynamic: true`); [`crate::kernels::int8`] does that and multiplies in integers.
//!
//! Dequantize (`forward.py::_dequantize`): `w = q · scale`.

use rayon::prelude::*;

use super::PackError;

/// An int8 weight with per-output-channel scales, as the runtime keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Linear {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]` codes, full int8 range.
    pub codes: Vec<i8>,
    /// `[rows]` scales.
    pub scale: Vec<f32>,
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
        })
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
}
