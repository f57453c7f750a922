//! Named f32 tensors in HF naming and layout (`[out, in]` for linears), whatever the file
//! format: the model builder, the converter and the quantizer read weights through this one
//! narrow trait instead of knowing about GGUF or safetensors.

mod dequantized;
mod gguf_source;
mod memory;
mod safetensors_dir;

use std::path::{Path, PathBuf};

pub use dequantized::DequantizedSource;
pub use gguf_source::GgufSource;
pub use memory::{tiny_config, MemorySource};
pub(crate) use safetensors_dir::release_mapped_pages;
pub use safetensors_dir::SafetensorsDir;

/// A checkpoint's tensors, by HF name.
pub trait WeightSource: Send + Sync {
    /// Names of every tensor, sorted.
    fn names(&self) -> Vec<String>;
    /// Shape in HF order (row-major, last dimension contiguous), if the tensor exists.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The tensor converted to f32, row-major.
    fn load_f32(&self, name: &str) -> Result<Vec<f32>, WeightError>;
    /// The packed quantized form of linear `prefix` (e.g. `model.layers.0.mlp.up_proj`), if
    /// the checkpoint stores one (`{prefix}.weight_packed` and friends); `None` means the
    /// weight is stored as floats under `{prefix}.weight`.
    fn load_packed(
        &self,
        _prefix: &str,
    ) -> Result<Option<crate::packed::PackedLinear>, WeightError> {
        Ok(None)
    }
    /// The int8 (`int-quantized`, W8A8) form of linear `prefix`, if the checkpoint stores
    /// its `{prefix}.weight` as int8 codes with a per-channel `weight_scale`.
    fn load_int8(&self, _prefix: &str) -> Result<Option<crate::packed::Int8Linear>, WeightError> {
        Ok(None)
    }
    /// The OneBit form of linear `prefix` (`{prefix}.weight_sign` and its value vectors), if
    /// the checkpoint stores one.
    fn load_onebit(
        &self,
        _prefix: &str,
    ) -> Result<Option<crate::packed::OneBitLinear>, WeightError> {
        Ok(None)
    }
    /// Lets the OS drop the resident pages of a memory-mapped file once a model has copied
    /// what it needs from it: the pages read during the load otherwise stay in the process's
    /// RSS beside the copies, doubling it. Later reads fault them back in from the page cache
    /// with the same contents. Sources that map nothing do nothing.
    fn release_pages(&self) {}
}

/// Why a weight could not be read; every variant names the file and the tensor or field.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{path}: cannot read: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}` not found")]
    Missing { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{path}: {reason}")]
    Other { path: PathBuf, reason: String },
}

/// Loads a tensor and checks its shape, so a mismatch names the tensor instead of panicking
/// deep inside a matmul.
pub fn load_checked(
    src: &dyn WeightSource,
    origin: &Path,
    name: &str,
    expected: &[usize],
) -> Result<Vec<f32>, WeightError> {
    let shape = src.shape(name).ok_or_else(|| WeightError::Missing {
        path: origin.to_owned(),
        name: name.to_owned(),
    })?;
    if shape != expected {
        return Err(WeightError::Shape {
            path: origin.to_owned(),
            name: name.to_owned(),
            actual: shape,
            expected: expected.to_vec(),
        });
    }
    src.load_f32(name)
}
