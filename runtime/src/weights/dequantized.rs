//! A view of a checkpoint with every packed linear dequantized to f32 on load: the same
//! weights run through the dense path instead of the packed kernels, which is how a packed
//! checkpoint's perplexity is checked against its dequantized reference.

use crate::packed::PackedLinear;

use super::{WeightError, WeightSource};

/// Wraps a source so `{prefix}.weight` is served (dequantized, by the packed format's scalar
/// reference) for every linear stored packed, and no linear is reported packed.
pub struct DequantizedSource<S> {
    inner: S,
}

impl<S: WeightSource> DequantizedSource<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    fn packed_of(&self, name: &str) -> Result<Option<PackedLinear>, WeightError> {
        match name.strip_suffix(".weight") {
            Some(prefix) => self.inner.load_packed(prefix),
            None => Ok(None),
        }
    }
}

impl<S: WeightSource> WeightSource for DequantizedSource<S> {
    fn names(&self) -> Vec<String> {
        let mut names = self.inner.names();
        let extra: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".weight_packed"))
            .map(|p| format!("{p}.weight"))
            .collect();
        names.extend(extra);
        names.sort();
        names.dedup();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.packed_of(name) {
            Ok(Some(p)) => Some(vec![p.rows, p.cols]),
            _ => self.inner.shape(name),
        }
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        if let Some(p) = self.packed_of(name)? {
            return Ok(p.dequantize_ref());
        }
        if let Some(w) = name
            .strip_suffix(".weight")
            .map(|prefix| self.inner.load_int8(prefix))
            .transpose()?
            .flatten()
        {
            return Ok(w.dequantize_ref());
        }
        self.inner.load_f32(name)
    }

    /// OneBit linears stay 1-bit: with their output norm they are not a matrix, and their
    /// kernel is already checked against the scalar reference.
    fn load_onebit(
        &self,
        prefix: &str,
    ) -> Result<Option<crate::packed::OneBitLinear>, WeightError> {
        self.inner.load_onebit(prefix)
    }

    fn release_pages(&self) {
        self.inner.release_pages()
    }
}

impl WeightSource for Box<dyn WeightSource> {
    fn names(&self) -> Vec<String> {
        (**self).names()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        (**self).shape(name)
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        (**self).load_f32(name)
    }
    fn load_packed(&self, prefix: &str) -> Result<Option<PackedLinear>, WeightError> {
        (**self).load_packed(prefix)
    }
    fn load_int8(&self, prefix: &str) -> Result<Option<crate::packed::Int8Linear>, WeightError> {
        (**self).load_int8(prefix)
    }
    fn load_onebit(
        &self,
        prefix: &str,
    ) -> Result<Option<crate::packed::OneBitLinear>, WeightError> {
        (**self).load_onebit(prefix)
    }
    fn release_pages(&self) {
        (**self).release_pages()
    }
}
