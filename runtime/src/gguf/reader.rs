//! Bounds-checked parsing of the GGUF header, metadata and tensor infos.
//!
//! Every length and count is checked against the bytes actually left in the file before
//! anything is read or allocated, so a truncated or corrupt file yields a message (turned into
//! a [`super::GgufError::Malformed`] naming the file by the caller), never a panic or an
//! allocation sized by garbage.

use super::types::GgmlType;
use super::{MetaValue, TensorInfo};

/// `"GGUF"` as the first four bytes of the file.
const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub(super) const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
const MAX_DIMS: u32 = 4;
/// Deepest array nesting accepted (real files use at most one level).
const MAX_ARRAY_DEPTH: usize = 8;
/// Smallest possible encoded metadata key/value: key length, value type, one byte of value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Smallest possible encoded tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

/// Everything parsed from a GGUF file except the tensor data itself.
pub(super) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// A read position over the whole mapped file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes, or explains what could not be read and where.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "file is truncated: reading {what} needs {n} bytes at offset {}, but only {} remain",
                self.pos,
                self.remaining()
            ));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let bytes = self.take(N, what)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads a count and checks that `count` items of at least `min_size` bytes each fit in
    /// what is left of the file, so the caller may pre-allocate `count` slots.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize, String> {
        let at = self.pos;
        let count = self.u64(what)?;
        let fits = (self.remaining() / min_size.max(1)) as u64;
        if count > fits {
            return Err(format!(
                "{what} {count} at offset {at} cannot fit in the {} bytes left \
                 (room for at most {fits}): truncated or corrupt file",
                self.remaining()
            ));
        }
        Ok(count as usize)
    }

    /// Reads a GGUF string (u64 length + UTF-8 bytes).
    fn string(&mut self, what: &str) -> Result<String, String> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(format!(
                "{what}: string length {len} at offset {at} exceeds the {} bytes left \
                 in the file: truncated or corrupt file",
                self.remaining()
            ));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("{what}: string at offset {at} is not UTF-8 ({e})"))
    }

    /// Reads a metadata value of GGUF value type `ty`.
    fn value(&mut self, ty: u32, depth: usize, what: &str) -> Result<MetaValue, String> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetaValue::String(self.string(what)?),
            9 => self.array_value(depth, what)?,
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(format!(
                    "{what}: unknown value type {other} at offset {}",
                    self.pos - 4
                ))
            }
        })
    }

    /// Reads an array value: element type, count, then the elements.
    fn array_value(&mut self, depth: usize, what: &str) -> Result<MetaValue, String> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(format!(
                "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
            ));
        }
        let elem_ty = self.u32(what)?;
        let min_size = min_value_size(elem_ty)
            .ok_or_else(|| format!("{what}: unknown array element type {elem_ty}"))?;
        let count = self.count(min_size, &format!("{what}: array length"))?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.value(elem_ty, depth + 1, what)?);
        }
        Ok(MetaValue::Array(items))
    }
}

/// Fewest bytes one value of GGUF value type `ty` can occupy; `None` for unknown types.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,     // length prefix
        9 => 4 + 8, // element type + count
        10..=12 => 8,
        _ => return None,
    })
}

/// Parses a whole GGUF v2/v3 file image.
pub(super) fn parse(buf: &[u8]) -> Result<Parsed, String> {
    let mut cur = Cursor { buf, pos: 0 };
    let version = header(&mut cur)?;
    let n_tensors = cur.count(MIN_TENSOR_INFO_BYTES, "tensor count")?;
    let n_kv = cur.count(MIN_KV_BYTES, "metadata key/value count")?;
    let metadata = metadata(&mut cur, n_kv)?;
    let mut tensors = tensor_infos(&mut cur, n_tensors)?;
    let alignment = alignment(&metadata)?;
    let data_offset = align_up(cur.pos as u64, alignment)
        .ok_or_else(|| "data section offset overflows".to_string())?;
    place_tensors(&mut tensors, data_offset, buf.len() as u64)?;
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Checks the magic and returns the version (2 or 3).
fn header(cur: &mut Cursor) -> Result<u32, String> {
    let magic = cur.array::<4>("magic")?;
    if &magic != MAGIC {
        return Err(format!(
            "not a GGUF file: magic is {:?}, expected \"GGUF\"",
            String::from_utf8_lossy(&magic)
        ));
    }
    let version = cur.u32("version")?;
    match version {
        2 | 3 => Ok(version),
        1 => Err("GGUF version 1 (32-bit counts) is not supported; re-convert the model".into()),
        v if (1..=3).contains(&v.swap_bytes()) => Err(format!(
            "GGUF version {v:#x} looks byte-swapped: big-endian GGUF files are not supported"
        )),
        v => Err(format!("unsupported GGUF version {v} (expected 2 or 3)")),
    }
}

/// Reads `n` metadata key/values, rejecting duplicate keys.
fn metadata(cur: &mut Cursor, n: usize) -> Result<Vec<(String, MetaValue)>, String> {
    let mut kvs: Vec<(String, MetaValue)> = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    for i in 0..n {
        let key = cur.string(&format!("metadata key #{i}"))?;
        let what = format!("metadata '{key}'");
        let ty = cur.u32(&what)?;
        let value = cur.value(ty, 0, &what)?;
        if !seen.insert(key.clone()) {
            return Err(format!("duplicate metadata key '{key}'"));
        }
        kvs.push((key, value));
    }
    Ok(kvs)
}

/// Reads `n` tensor infos; `offset` is left relative to the data section.
fn tensor_infos(cur: &mut Cursor, n: usize) -> Result<Vec<TensorInfo>, String> {
    let mut tensors = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    for i in 0..n {
        let info = tensor_info(cur, i)?;
        if !seen.insert(info.name.clone()) {
            return Err(format!("duplicate tensor name '{}'", info.name));
        }
        tensors.push(info);
    }
    Ok(tensors)
}

/// Reads and validates one tensor info (name, dims, type, relative offset).
fn tensor_info(cur: &mut Cursor, index: usize) -> Result<TensorInfo, String> {
    let name = cur.string(&format!("name of tensor #{index}"))?;
    let what = format!("tensor '{name}'");
    let n_dims = cur.u32(&what)?;
    if n_dims > MAX_DIMS {
        return Err(format!(
            "{what} has {n_dims} dimensions (at most {MAX_DIMS})"
        ));
    }
    let dims = (0..n_dims)
        .map(|_| cur.u64(&what))
        .collect::<Result<Vec<u64>, String>>()?;
    let dtype = GgmlType::from_id(cur.u32(&what)?);
    let offset = cur.u64(&what)?;
    let info = TensorInfo {
        name,
        dims,
        dtype,
        offset,
    };
    check_shape(&info)?;
    Ok(info)
}

/// Checks that the element count neither overflows nor splits a block, and that the type
/// is known well enough to size the data.
fn check_shape(t: &TensorInfo) -> Result<(), String> {
    let (block_elems, _) = t
        .dtype
        .block_layout()
        .ok_or_else(|| format!("tensor '{}' has unknown {}", t.name, t.dtype))?;
    let n = t
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| format!("tensor '{}' shape {:?} overflows", t.name, t.dims))?;
    let ne0 = t.dims.first().copied().unwrap_or(1);
    if n > 0 && !ne0.is_multiple_of(block_elems as u64) {
        return Err(format!(
            "tensor '{}' row length {ne0} is not a multiple of the {}-element {} block",
            t.name, block_elems, t.dtype
        ));
    }
    Ok(())
}

/// `general.alignment` (a positive power of two), or the default.
fn alignment(metadata: &[(String, MetaValue)]) -> Result<u64, String> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == "general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_u64() {
        Some(a) if a.is_power_of_two() => Ok(a),
        _ => Err(format!(
            "general.alignment {value:?} is not a positive power of two"
        )),
    }
}

fn align_up(pos: u64, alignment: u64) -> Option<u64> {
    pos.checked_next_multiple_of(alignment)
}

/// Makes tensor offsets absolute and checks each tensor's data lies inside the file.
fn place_tensors(
    tensors: &mut [TensorInfo],
    data_offset: u64,
    file_len: u64,
) -> Result<(), String> {
    for t in tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes()));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => t.offset = start,
            _ => {
                return Err(format!(
                    "tensor '{}' data [{}..{}) lies past the end of the file ({file_len} bytes)",
                    t.name,
                    data_offset as u128 + t.offset as u128,
                    data_offset as u128 + t.offset as u128 + t.n_bytes() as u128,
                ))
            }
        }
    }
    Ok(())
}
