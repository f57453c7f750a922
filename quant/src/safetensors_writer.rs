//! A streaming safetensors writer: the header is computed from shapes first, then tensors are
//! produced and written one at a time, so converting a model never holds two copies of it.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Element type of a tensor as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    F32,
    BF16,
    F16,
    I32,
    I64,
    U8,
    I8,
}

impl StDtype {
    fn name(self) -> &'static str {
        match self {
            StDtype::F32 => "F32",
            StDtype::BF16 => "BF16",
            StDtype::F16 => "F16",
            StDtype::I32 => "I32",
            StDtype::I64 => "I64",
            StDtype::U8 => "U8",
            StDtype::I8 => "I8",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StDtype::F32 | StDtype::I32 => 4,
            StDtype::I64 => 8,
            StDtype::BF16 | StDtype::F16 => 2,
            StDtype::U8 | StDtype::I8 => 1,
        }
    }
}

/// A tensor to be written: its name, dtype and shape, known before its bytes are.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
}

/// Writes `specs` to `path`, asking `bytes_of` for each tensor's little-endian bytes in order.
pub fn write_streaming(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    mut bytes_of: impl FnMut(&TensorSpec) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    let mut offset = 0usize;
    for s in specs {
        let n = s.shape.iter().product::<usize>() * s.dtype.size();
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": s.dtype.name(), "shape": s.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut json = serde_json::to_vec(&header)?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let file = std::fs::File::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
    for s in specs {
        let bytes = bytes_of(s)?;
        let n = s.shape.iter().product::<usize>() * s.dtype.size();
        anyhow::ensure!(
            bytes.len() == n,
            "tensor `{}`: produced {} bytes, expected {n}",
            s.name,
            bytes.len()
        );
        w.write_all(&bytes)?;
    }
    w.flush()?;
    Ok(())
}

/// f32 values as little-endian bytes of `dtype` (bf16/f16 rounded to nearest even).
pub fn encode_f32(values: &[f32], dtype: StDtype) -> Vec<u8> {
    match dtype {
        StDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StDtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        StDtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        StDtype::I32 | StDtype::I64 | StDtype::U8 | StDtype::I8 => {
            panic!("encode_f32: {dtype:?} is not a float type")
        }
    }
}
