//! GGUF reader: round trips through small files written by a tiny writer here, and corrupt
//! files (truncated, bad magic, impossible lengths and offsets) that must give an error
//! naming the file, never a panic.

use std::path::{Path, PathBuf};

use half::f16;
use lmq_runtime::gguf::{GgmlType, GgufError, GgufFile, MetaValue};

// ----- a minimal GGUF writer -----

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

/// GGUF value type id of a value.
fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

/// Encodes a value without its type tag. Arrays take their element type from the first
/// element (u8 when empty).
fn put_value(buf: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => buf.push(*x),
        MetaValue::I8(x) => buf.push(*x as u8),
        MetaValue::U16(x) => buf.extend(x.to_le_bytes()),
        MetaValue::I16(x) => buf.extend(x.to_le_bytes()),
        MetaValue::U32(x) => buf.extend(x.to_le_bytes()),
        MetaValue::I32(x) => buf.extend(x.to_le_bytes()),
        MetaValue::F32(x) => buf.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => buf.push(*x as u8),
        MetaValue::String(s) => put_str(buf, s),
        MetaValue::Array(items) => {
            buf.extend(items.first().map_or(0, type_id).to_le_bytes());
            buf.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(buf, item));
        }
        MetaValue::U64(x) => buf.extend(x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend(x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend(x.to_le_bytes()),
    }
}

struct TestTensor {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF image: tensors are placed in order, each at the next aligned offset, and
/// the file ends right after the last tensor's data (so any shorter prefix is invalid).
struct Writer {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TestTensor>,
}

impl Writer {
    fn new() -> Self {
        Self {
            version: 3,
            alignment: 32,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    fn kv(mut self, key: &str, v: MetaValue) -> Self {
        self.metadata.push((key.to_string(), v));
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], dtype: GgmlType, data: Vec<u8>) -> Self {
        let t = TestTensor {
            name: name.into(),
            dims: dims.to_vec(),
            dtype,
            data,
        };
        self.tensors.push(t);
        self
    }

    /// Relative offsets of each tensor in the data section.
    fn offsets(&self) -> Vec<u64> {
        let mut at = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let off = at.next_multiple_of(self.alignment);
                at = off + t.data.len() as u64;
                off
            })
            .collect()
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes_with_offsets(&self.offsets())
    }

    fn bytes_with_offsets(&self, offsets: &[u64]) -> Vec<u8> {
        let mut buf = b"GGUF".to_vec();
        buf.extend(self.version.to_le_bytes());
        buf.extend((self.tensors.len() as u64).to_le_bytes());
        buf.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut buf, k);
            buf.extend(type_id(v).to_le_bytes());
            put_value(&mut buf, v);
        }
        for (t, off) in self.tensors.iter().zip(offsets) {
            put_str(&mut buf, &t.name);
            buf.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| buf.extend(d.to_le_bytes()));
            buf.extend(t.dtype.id().to_le_bytes());
            buf.extend(off.to_le_bytes());
        }
        let data_start = (buf.len() as u64).next_multiple_of(self.alignment) as usize;
        buf.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(self.offsets()) {
            buf.resize(data_start + off as usize, 0);
            buf.extend(&t.data);
        }
        buf
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Opening must fail; returns the message after checking it names the file.
fn open_err(path: &Path) -> String {
    let err = GgufFile::open(path).expect_err("corrupt file must not open");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name the file: {msg}"
    );
    msg
}

fn sample_writer() -> Writer {
    let f32_data: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
    let f16_data: Vec<u8> = [1.0f32, -0.5, 2.0, 0.25]
        .iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect();
    let mut q8 = Vec::new();
    for row in 0..2 {
        q8.extend(f16::from_f32(0.5 * (row + 1) as f32).to_le_bytes());
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    }
    Writer::new()
        .kv("general.architecture", MetaValue::String("llama".into()))
        .kv("general.alignment", MetaValue::U32(64))
        .kv("u8", MetaValue::U8(200))
        .kv("i8", MetaValue::I8(-5))
        .kv("u16", MetaValue::U16(60000))
        .kv("i16", MetaValue::I16(-30000))
        .kv("llama.block_count", MetaValue::U32(30))
        .kv("i32", MetaValue::I32(-7))
        .kv("llama.rope.freq_base", MetaValue::F32(100000.0))
        .kv("flag", MetaValue::Bool(true))
        .kv("u64", MetaValue::U64(1 << 40))
        .kv("i64", MetaValue::I64(-(1 << 40)))
        .kv("f64", MetaValue::F64(0.125))
        .kv(
            "tokenizer.ggml.tokens",
            MetaValue::Array(vec![
                MetaValue::String("<s>".into()),
                MetaValue::String("héllo".into()),
                MetaValue::String(String::new()),
            ]),
        )
        .kv(
            "tokenizer.ggml.token_type",
            MetaValue::Array(vec![
                MetaValue::I32(3),
                MetaValue::I32(1),
                MetaValue::I32(-1),
            ]),
        )
        .kv(
            "nested",
            MetaValue::Array(vec![
                MetaValue::Array(vec![MetaValue::U16(1), MetaValue::U16(2)]),
                MetaValue::Array(vec![MetaValue::U16(3)]),
            ]),
        )
        .kv("empty", MetaValue::Array(vec![]))
        .tensor("t.f32", &[3, 2], GgmlType::F32, f32_bytes(&f32_data))
        .tensor("t.f16", &[4], GgmlType::F16, f16_data)
        .tensor("t.q8_0", &[32, 2], GgmlType::Q8_0, q8)
}

#[test]
fn round_trip_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let w = sample_writer();
    let path = write(dir.path(), "model.gguf", &w.bytes());
    let g = GgufFile::open(&path).unwrap();

    assert_eq!(g.version, 3);
    assert_eq!(g.path(), path);
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    // Insertion order and exact values are kept.
    assert_eq!(g.metadata, w.metadata);
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.get_u64("llama.block_count"), Some(30));
    assert_eq!(g.get_u64("u8"), Some(200));
    assert_eq!(g.get_u64("u16"), Some(60000));
    assert_eq!(g.get_u64("u64"), Some(1 << 40));
    assert_eq!(
        g.get_u64("i32"),
        None,
        "negative values do not widen to u64"
    );
    assert_eq!(g.get_u64("general.architecture"), None);
    assert_eq!(g.get_f32("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(g.get_f32("f64"), Some(0.125));
    assert_eq!(g.get_f32("u8"), None);
    assert_eq!(g.get_bool("flag"), Some(true));
    assert_eq!(g.get_bool("u8"), None);
    assert_eq!(g.get("i64"), Some(&MetaValue::I64(-(1 << 40))));
    assert_eq!(g.get("missing"), None);
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens"),
        Some(vec!["<s>", "héllo", ""])
    );
    assert_eq!(
        g.get_i64_array("tokenizer.ggml.token_type"),
        Some(vec![3, 1, -1])
    );
    assert_eq!(g.get_str_array("tokenizer.ggml.token_type"), None);
    assert_eq!(g.get_i64_array("empty"), Some(vec![]));

    assert_eq!(g.tensors.len(), 3);
    let t = g.tensor("t.f32").unwrap();
    assert_eq!(
        (t.dims.clone(), t.dtype, t.n_elements(), t.n_bytes()),
        (vec![3, 2], GgmlType::F32, 6, 24)
    );
    assert_eq!(t.offset % 64, 0);
    assert_eq!(t.shape(), vec![2, 3]);
    assert_eq!(g.tensor_bytes(t), &w.tensors[0].data[..]);
    assert_eq!(
        g.tensor_f32("t.f32").unwrap(),
        vec![-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]
    );
    assert_eq!(g.tensor_f32("t.f16").unwrap(), vec![1.0, -0.5, 2.0, 0.25]);
    let q8 = g.tensor_f32("t.q8_0").unwrap();
    assert_eq!(q8.len(), 64);
    assert_eq!((q8[0], q8[31], q8[32], q8[63]), (-8.0, 7.5, -16.0, 15.0));
    assert_eq!(g.tensor("t.q8_0").unwrap().n_bytes(), 68);
}

#[test]
fn version_2_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = sample_writer();
    w.version = 2;
    let path = write(dir.path(), "v2.gguf", &w.bytes());
    assert_eq!(GgufFile::open(&path).unwrap().version, 2);
}

#[test]
fn default_alignment_is_32() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::new().tensor("a", &[1], GgmlType::F32, f32_bytes(&[1.0]));
    let path = write(dir.path(), "a.gguf", &w.bytes());
    let g = GgufFile::open(&path).unwrap();
    assert_eq!((g.alignment, g.data_offset % 32), (32, 0));
    assert_eq!(g.tensor_f32("a").unwrap(), vec![1.0]);
}

/// Every strict prefix of a valid file is rejected with an error naming the file.
#[test]
fn every_truncation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_writer().bytes();
    for len in 0..bytes.len() {
        let path = write(dir.path(), "cut.gguf", &bytes[..len]);
        open_err(&path);
    }
}

#[test]
fn truncated_message_says_what() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_writer().bytes();
    let path = write(dir.path(), "cut.gguf", &bytes[..40]);
    let msg = open_err(&path);
    assert!(msg.contains("truncated"), "{msg}");
    let path = write(dir.path(), "tiny.gguf", b"GGUF");
    assert!(open_err(&path).contains("too short"));
}

#[test]
fn tensor_data_past_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::new()
        .tensor(
            "blk.0.attn_q.weight",
            &[4],
            GgmlType::F32,
            f32_bytes(&[1.0; 4]),
        )
        .tensor(
            "blk.0.attn_k.weight",
            &[4],
            GgmlType::F32,
            f32_bytes(&[2.0; 4]),
        );
    let bytes = w.bytes_with_offsets(&[0, 4096]);
    let path = write(dir.path(), "model.gguf", &bytes);
    let msg = open_err(&path);
    assert!(msg.contains("blk.0.attn_k.weight"), "{msg}");
    assert!(msg.contains("lies past the end of the file"), "{msg}");
    assert!(msg.contains(&format!("({} bytes)", bytes.len())), "{msg}");

    // An offset near u64::MAX must not overflow.
    let bytes = w.bytes_with_offsets(&[0, u64::MAX - 3]);
    let path = write(dir.path(), "overflow.gguf", &bytes);
    assert!(open_err(&path).contains("past the end"));
}

#[test]
fn bad_magic() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = sample_writer().bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let path = write(dir.path(), "bad.gguf", &bytes);
    assert!(open_err(&path).contains("not a GGUF file"));
}

#[test]
fn unsupported_versions() {
    let dir = tempfile::tempdir().unwrap();
    for (version, needle) in [
        (1u32, "version 1"),
        (7, "unsupported GGUF version 7"),
        (3 << 24, "big-endian"),
    ] {
        let mut w = sample_writer();
        w.version = version;
        let path = write(dir.path(), "v.gguf", &w.bytes());
        let msg = open_err(&path);
        assert!(msg.contains(needle), "{msg}");
    }
}

/// Header with the given counts followed by `rest`.
fn raw(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut buf = b"GGUF".to_vec();
    buf.extend(3u32.to_le_bytes());
    buf.extend(n_tensors.to_le_bytes());
    buf.extend(n_kv.to_le_bytes());
    buf.extend(rest);
    buf
}

#[test]
fn string_length_larger_than_file() {
    let dir = tempfile::tempdir().unwrap();
    // One key whose length claims 1 TB.
    let mut rest = (1u64 << 40).to_le_bytes().to_vec();
    rest.extend(b"general.name plus padding");
    let path = write(dir.path(), "strlen.gguf", &raw(0, 1, &rest));
    let msg = open_err(&path);
    assert!(msg.contains("string length 1099511627776"), "{msg}");

    // A string value whose length exceeds the file.
    let mut rest = Vec::new();
    put_str(&mut rest, "general.name");
    rest.extend(8u32.to_le_bytes());
    rest.extend(u64::MAX.to_le_bytes());
    rest.extend([b'x'; 16]);
    let path = write(dir.path(), "strval.gguf", &raw(0, 1, &rest));
    let msg = open_err(&path);
    assert!(
        msg.contains("general.name") && msg.contains("string length"),
        "{msg}"
    );
}

#[test]
fn impossible_counts_are_rejected_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "kv.gguf", &raw(0, u64::MAX, &[0; 64]));
    assert!(open_err(&path).contains("metadata key/value count"));
    let path = write(dir.path(), "tn.gguf", &raw(1 << 50, 0, &[0; 64]));
    assert!(open_err(&path).contains("tensor count"));

    // An array claiming 2^60 u32 elements.
    let mut rest = Vec::new();
    put_str(&mut rest, "tokenizer.ggml.scores");
    rest.extend(9u32.to_le_bytes());
    rest.extend(4u32.to_le_bytes());
    rest.extend((1u64 << 60).to_le_bytes());
    rest.extend([0; 64]);
    let path = write(dir.path(), "arr.gguf", &raw(0, 1, &rest));
    let msg = open_err(&path);
    assert!(
        msg.contains("tokenizer.ggml.scores") && msg.contains("array length"),
        "{msg}"
    );
}

#[test]
fn unknown_value_type_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut rest = Vec::new();
    put_str(&mut rest, "weird");
    rest.extend(13u32.to_le_bytes());
    rest.extend([0; 32]);
    let path = write(dir.path(), "ty.gguf", &raw(0, 1, &rest));
    assert!(open_err(&path).contains("unknown value type 13"));

    let w = Writer::new()
        .kv("a", MetaValue::U8(1))
        .kv("a", MetaValue::U8(2));
    let path = write(dir.path(), "dup.gguf", &w.bytes());
    assert!(open_err(&path).contains("duplicate metadata key 'a'"));

    let w = Writer::new()
        .tensor("w", &[1], GgmlType::F32, f32_bytes(&[1.0]))
        .tensor("w", &[1], GgmlType::F32, f32_bytes(&[1.0]));
    let path = write(dir.path(), "dupt.gguf", &w.bytes());
    assert!(open_err(&path).contains("duplicate tensor name 'w'"));
}

#[test]
fn bad_shapes_types_and_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::new().tensor("q", &[31], GgmlType::Q4_0, vec![0; 18]);
    let path = write(dir.path(), "row.gguf", &w.bytes());
    assert!(open_err(&path).contains("not a multiple of the 32-element"));

    let w = Writer::new().tensor("x", &[4], GgmlType::Other(99), vec![0; 16]);
    let path = write(dir.path(), "type.gguf", &w.bytes());
    let msg = open_err(&path);
    assert!(msg.contains("'x'") && msg.contains("99"), "{msg}");

    let w = Writer::new().tensor("x", &[1 << 32, 1 << 32, 1 << 2], GgmlType::F32, vec![]);
    let path = write(dir.path(), "huge.gguf", &w.bytes());
    assert!(open_err(&path).contains("overflows"));

    let w = Writer::new().tensor("x", &[1, 1, 1, 1, 1], GgmlType::F32, f32_bytes(&[1.0]));
    let path = write(dir.path(), "dims.gguf", &w.bytes());
    assert!(open_err(&path).contains("5 dimensions"));

    let mut bytes = Writer::new()
        .kv("general.alignment", MetaValue::U32(24))
        .bytes();
    let path = write(dir.path(), "align.gguf", &bytes);
    assert!(open_err(&path).contains("power of two"));
    bytes.truncate(0);
}

#[test]
fn missing_and_unsupported_tensors() {
    let dir = tempfile::tempdir().unwrap();
    // IQ4_NL (id 20) is sized but not decoded.
    let w = Writer::new().tensor("iq", &[32], GgmlType::Other(20), vec![0; 18]);
    let path = write(dir.path(), "iq.gguf", &w.bytes());
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensor("iq").unwrap().n_bytes(), 18);
    let err = g.tensor_f32("iq").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, GgufError::Tensor { .. }), "{msg}");
    assert!(
        msg.contains("iq.gguf") && msg.contains("'iq'") && msg.contains("unsupported"),
        "{msg}"
    );

    let err = g.tensor_f32("nope").unwrap_err();
    assert!(matches!(err, GgufError::MissingTensor { .. }));
    let msg = err.to_string();
    assert!(msg.contains("iq.gguf") && msg.contains("'nope'"), "{msg}");
}

#[test]
fn missing_file_is_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.gguf");
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("absent.gguf"));
}
