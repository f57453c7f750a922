//! GGUF v3 (and v2) reader with dequantizers to `f32`.
//!
//! The toolchain's source checkpoints only exist as quantized GGUF files, so this module
//! memory-maps a file, parses its metadata and tensor table with every length checked
//! against the file size, and decodes tensors (F32/F16/BF16, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q8_1,
//! Q2_K..Q8_K) into plain `f32` row-major data with `ne0` (the first dimension) contiguous.

mod dequant;
mod reader;
mod types;

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use dequant::dequantize;
pub use types::{GgmlType, QK_K};

/// Errors from opening a GGUF file or decoding its tensors. Errors about a file name it, so
/// a message is actionable without further context.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid GGUF (bad magic, truncated, inconsistent sizes, ...).
    #[error("{}: {msg}", path.display())]
    Malformed { path: PathBuf, msg: String },
    /// No tensor of that name in the file.
    #[error("{}: no tensor named '{name}'", path.display())]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor exists but cannot be decoded (unsupported type, size mismatch).
    #[error("{}: tensor '{name}': {source}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        #[source]
        source: Box<GgufError>,
    },
    /// [`dequantize`] has no decoder for this type.
    #[error("cannot dequantize {dtype}: unsupported tensor type")]
    Unsupported { dtype: GgmlType },
    /// [`dequantize`] was given buffers that do not match the element count.
    #[error("cannot dequantize {dtype}: {msg}")]
    BadLength { dtype: GgmlType, msg: String },
}

/// A GGUF metadata value, one variant per GGUF value type, so callers can match exactly
/// what the file stores (use the `GgufFile::get_*` helpers for lenient access).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// Any integer variant widened to `u64`; `None` for negatives and non-integers.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer variant as `i64`; `None` for a `u64` above `i64::MAX` and non-integers.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::U64(v) => i64::try_from(v).ok(),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            ref other => other.as_u64().map(|v| v as i64),
        }
    }

    /// `F32`, or `F64` narrowed to `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// The string of a `String` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Where a tensor's data lives in the file and how to interpret it.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name as in llama.cpp (`blk.0.attn_q.weight`, `token_embd.weight`, ...).
    pub name: String,
    /// Dimensions with `ne0` (innermost, contiguous) first, as stored in GGUF.
    pub dims: Vec<u64>,
    /// Element type of the stored data.
    pub dtype: GgmlType,
    /// Absolute file offset of the data (data section start + the stored relative offset).
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of `dims`; 1 for a 0-d tensor), for sizing outputs.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row-major shape, outermost first (`dims` reversed: `[ne1, ne0]` for a matrix), the
    /// order burn and numpy use for the data [`GgufFile::tensor_f32`] returns.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Bytes of data in the file; 0 for a type whose block size is unknown.
    pub fn n_bytes(&self) -> u64 {
        match self.dtype.block_layout() {
            Some((elems, bytes)) => (self.n_elements() / elems as u64).saturating_mul(bytes as u64),
            None => 0,
        }
    }
}

/// An opened, memory-mapped GGUF file: metadata and tensor table parsed and validated, tensor
/// data read lazily from the map.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/values in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensor table in file order, offsets absolute.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute file offset where the tensor data section starts.
    pub data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("len", &self.mmap.len())
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates `path`: every count, string, offset and size is checked against
    /// the file length, so a corrupt file gives an error naming it rather than a panic.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len < 24 {
            return Err(GgufError::Malformed {
                path: path.to_path_buf(),
                msg: format!("file is {len} bytes, too short for a GGUF header (24 bytes)"),
            });
        }
        // SAFETY: the map is read-only; like every GGUF loader we assume the model file is
        // not truncated or rewritten by another process while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let parsed = reader::parse(&mmap).map_err(|msg| GgufError::Malformed {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        })
    }

    /// Drops the map's resident pages (see `WeightSource::release_pages`).
    pub fn release_pages(&self) {
        crate::weights::release_mapped_pages(&self.mmap);
    }

    /// Drops the resident pages of tensor `name`'s data once it has been copied out, so a
    /// model load does not hold the file's pages beside its copies.
    pub fn release_tensor(&self, name: &str) {
        let Some(t) = self.tensor(name) else { return };
        let (Ok(start), Ok(len)) = (usize::try_from(t.offset), usize::try_from(t.n_bytes())) else {
            return;
        };
        #[cfg(unix)]
        // SAFETY: a read-only file mapping; the caller holds no slice of this tensor, and a
        // later read faults the file's same bytes back in.
        unsafe {
            let _ =
                self.mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
        }
        #[cfg(not(unix))]
        let _ = (start, len);
    }

    /// The path the file was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw metadata value for `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// An integer metadata value of any integer type, widened (negatives give `None`).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// A float metadata value (`f32`, or `f64` narrowed).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    /// A boolean metadata value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`); `None` if any element is not one.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        match self.get(key)? {
            MetaValue::Array(items) => items.iter().map(MetaValue::as_str).collect(),
            _ => None,
        }
    }

    /// An array of integers of any integer type as `i64` (e.g. `tokenizer.ggml.token_type`);
    /// `None` if any element is not an integer or does not fit.
    pub fn get_i64_array(&self, key: &str) -> Option<Vec<i64>> {
        match self.get(key)? {
            MetaValue::Array(items) => items.iter().map(MetaValue::as_i64).collect(),
            _ => None,
        }
    }

    /// The tensor info for `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor's data, borrowed from the map. Infos from [`GgufFile::open`]
    /// are always in bounds; an out-of-bounds foreign info yields an empty slice.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset)
            .ok()
            .zip(usize::try_from(t.n_bytes()).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?));
        range.and_then(|r| self.mmap.get(r)).unwrap_or(&[])
    }

    /// The tensor `name` dequantized to `f32`, row-major with `ne0` contiguous; the error
    /// names the file and tensor if it is absent or its type cannot be decoded.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        self.decode(t).map_err(|source| GgufError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            source: Box::new(source),
        })
    }

    /// Dequantizes one tensor of this file.
    fn decode(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        if !t.dtype.can_dequantize() {
            return Err(GgufError::Unsupported { dtype: t.dtype });
        }
        let n = usize::try_from(t.n_elements()).map_err(|_| GgufError::BadLength {
            dtype: t.dtype,
            msg: format!("{} elements do not fit in memory", t.n_elements()),
        })?;
        let mut out = vec![0f32; n];
        dequantize(t.dtype, self.tensor_bytes(t), n, &mut out)?;
        Ok(out)
    }
}
