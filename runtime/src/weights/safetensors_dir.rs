//! HF checkpoint directories: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; each tensor is converted to f32
//! only when asked for.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::{WeightError, WeightSource};
use crate::packed::{ActQuant, Int8Linear, OneBitLinear, PackedLinear};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// One HF checkpoint directory (single file or sharded).
pub struct SafetensorsDir {
    shards: Vec<Shard>,
    /// Code widths of a compressed-tensors `pack-quantized` checkpoint (from config.json).
    packed_bits: PackedBits,
    /// How each `int-quantized` (W8A8) group quantizes its inputs per token.
    int8_activations: ByModule<ActQuant>,
    /// `quantization_config.output_norm` of a OneBit checkpoint (`quant_method: onebit`).
    onebit_output_norm: Option<bool>,
    /// Where every tensor lives, read from the headers once at open.
    index: BTreeMap<String, Entry>,
}

/// A tensor's location: shard, dtype, shape and byte range inside the shard's map.
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

impl SafetensorsDir {
    /// Opens every shard and validates its header against the file length.
    pub fn open(dir: &Path) -> Result<Self, WeightError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            shard_files(&index_path)?
        } else {
            return Err(WeightError::Other {
                path: dir.to_owned(),
                reason: "no model.safetensors or model.safetensors.index.json".into(),
            });
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = File::open(&path).map_err(|source| WeightError::Io {
                path: path.clone(),
                cause: source,
            })?;
            // SAFETY: the map is read-only; a checkpoint modified while we run is a user error
            // that at worst yields wrong numbers, as with any mmap-based loader.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| WeightError::Io {
                path: path.clone(),
                cause: source,
            })?;
            let st = parse(&path, &mmap)?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let range = view.data().as_ptr_range();
                let entry = Entry {
                    shard: i,
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: range.start as usize - base..range.end as usize - base,
                };
                index.insert(name, entry);
            }
            shards.push(Shard { path, mmap });
        }
        let quant = quantization_config(&dir.join("config.json"));
        let packed_bits = quant.as_ref().map(packed_bits).unwrap_or_default();
        let int8_activations = quant.as_ref().map(int8_activations).unwrap_or_default();
        let onebit_output_norm = quant.as_ref().and_then(onebit_output_norm);
        Ok(Self {
            shards,
            packed_bits,
            int8_activations,
            onebit_output_norm,
            index,
        })
    }
}

/// A per-group setting of a compressed-tensors config: per module named in a group's
/// `targets`, and the first group's for modules named by class (`Linear`), so a checkpoint
/// may mix them (4-bit layers, an 8-bit head).
#[derive(Debug, Clone)]
struct ByModule<T> {
    by_module: std::collections::HashMap<String, T>,
    default: Option<T>,
}

impl<T> Default for ByModule<T> {
    fn default() -> Self {
        Self {
            by_module: Default::default(),
            default: None,
        }
    }
}

impl<T: Copy> ByModule<T> {
    fn of(&self, module: &str) -> Option<T> {
        self.by_module.get(module).copied().or(self.default)
    }

    fn insert(&mut self, group: &serde_json::Value, value: T) {
        for t in group
            .get("targets")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            match t.as_str() {
                Some(m) if m.contains('.') && !m.starts_with("re:") => {
                    self.by_module.insert(m.to_owned(), value);
                }
                _ => {
                    self.default.get_or_insert(value);
                }
            }
        }
    }
}

/// Code widths of a compressed-tensors `pack-quantized` config.
type PackedBits = ByModule<u8>;

/// The config groups stored as `format` (each group's own, else the config's; a
/// `mixed-precision` config names it per group).
fn groups_of<'a>(
    q: &'a serde_json::Value,
    format: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    let top = q.get("format").and_then(|f| f.as_str());
    let known = matches!(top, Some(t) if t == format || t == "mixed-precision");
    q.get("config_groups")
        .and_then(|g| g.as_object())
        .into_iter()
        .flat_map(|o| o.values())
        .filter(move |g| known && g.get("format").and_then(|f| f.as_str()).or(top) == Some(format))
}

/// Per-token activation quantization of the `int-quantized` (W8A8) groups: their
/// `input_activations.symmetric` (absent: symmetric, vLLM's default W8A8).
fn int8_activations(q: &serde_json::Value) -> ByModule<ActQuant> {
    let mut modes = ByModule::default();
    for g in groups_of(q, "int-quantized") {
        let symmetric = g
            .get("input_activations")
            .and_then(|a| a.get("symmetric"))
            .and_then(|s| s.as_bool())
            .unwrap_or(true);
        modes.insert(g, ActQuant::from_symmetric(symmetric));
    }
    modes
}

/// `config.json`'s `quantization_config`, if the file has one.
fn quantization_config(config: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(config).ok()?;
    let mut v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v.get_mut("quantization_config")?.take())
}

/// Only `pack-quantized` groups count: the config's own `format`, or, in a `mixed-precision`
/// checkpoint (W8A8 `int-quantized` layers beside packed ones), each group's.
fn packed_bits(q: &serde_json::Value) -> PackedBits {
    let mut bits = PackedBits::default();
    for g in groups_of(q, "pack-quantized") {
        if let Some(b) = g
            .get("weights")
            .and_then(|w| w.get("num_bits"))
            .and_then(|b| b.as_u64())
        {
            bits.insert(g, b as u8);
        }
    }
    bits
}

/// `output_norm` of a `quant_method: onebit` quantization config, if that is the config.
fn onebit_output_norm(q: &serde_json::Value) -> Option<bool> {
    if q.get("quant_method")?.as_str()? != "onebit" {
        return None;
    }
    q.get("output_norm")?.as_bool()
}

fn ints(dtype: Dtype, bytes: &[u8]) -> Option<Vec<i64>> {
    Some(match dtype {
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        _ => return None,
    })
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, WeightError> {
    if bytes.len() >= 8 {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        if n > bytes.len() as u64 - 8 {
            return Err(WeightError::Safetensors {
                path: path.to_owned(),
                reason: format!(
                    "header length {n} is larger than the file ({} bytes): truncated or not safetensors",
                    bytes.len()
                ),
            });
        }
    }
    SafeTensors::deserialize(bytes).map_err(|e| WeightError::Safetensors {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn shard_files(index_path: &Path) -> Result<Vec<PathBuf>, WeightError> {
    let text = std::fs::read_to_string(index_path).map_err(|source| WeightError::Io {
        path: index_path.to_owned(),
        cause: source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| WeightError::Other {
        path: index_path.to_owned(),
        reason: format!("not valid JSON: {e}"),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| WeightError::Other {
            path: index_path.to_owned(),
            reason: "missing field `weight_map`".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    files.sort();
    files.dedup();
    let dir = index_path.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Converts raw little-endian tensor bytes of a float dtype to f32.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        _ => return None,
    })
}

impl WeightSource for SafetensorsDir {
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|e| e.shape.clone())
    }

    fn release_pages(&self) {
        for shard in &self.shards {
            release_mapped_pages(&shard.mmap);
        }
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        let (dtype, _, bytes) = self.raw(name).ok_or_else(|| WeightError::Missing {
            path: self
                .shards
                .first()
                .map(|s| s.path.clone())
                .unwrap_or_default(),
            name: name.to_owned(),
        })?;
        let values = to_f32(dtype, bytes).ok_or_else(|| WeightError::Dtype {
            path: self.shards[self.index[name].shard].path.clone(),
            name: name.to_owned(),
            dtype: format!("{dtype:?}"),
        });
        self.release(name);
        values
    }

    fn load_int8(&self, prefix: &str) -> Result<Option<Int8Linear>, WeightError> {
        let name = format!("{prefix}.weight");
        let Some((Dtype::I8, shape, bytes)) = self.raw(&name) else {
            return Ok(None);
        };
        let path = self.shards[self.index[&name].shard].path.clone();
        let bad = |reason: String| WeightError::Other {
            path: path.clone(),
            reason: format!("{name}: {reason}"),
        };
        let [rows, cols] = shape[..] else {
            return Err(bad(format!("int8 weight of shape {shape:?} is not 2-D")));
        };
        let scale_name = format!("{prefix}.weight_scale");
        if !self.index.contains_key(&scale_name) {
            return Err(bad(format!("int8 weight without `{scale_name}`")));
        }
        let scale = self.load_f32(&scale_name)?;
        let codes = bytes.iter().map(|&b| b as i8).collect();
        self.release(&name);
        let activations = self.int8_activations.of(prefix).unwrap_or_default();
        Int8Linear::new(rows, cols, codes, scale)
            .map(|w| Some(w.with_activations(activations)))
            .map_err(|e| bad(e.to_string()))
    }

    fn load_onebit(&self, prefix: &str) -> Result<Option<OneBitLinear>, WeightError> {
        let sign_name = format!("{prefix}.weight_sign");
        let Some((dtype, shape, bytes)) = self.raw(&sign_name) else {
            return Ok(None);
        };
        let path = self.shards[self.index[&sign_name].shard].path.clone();
        let bad = |reason: String| WeightError::Other {
            path: path.clone(),
            reason: format!("{prefix}: {reason}"),
        };
        let output_norm = self.onebit_output_norm.ok_or_else(|| {
            bad(
                "1-bit signs but config.json has no `quant_method: onebit` with `output_norm`"
                    .into(),
            )
        })?;
        if dtype != Dtype::I32 || shape.len() != 2 {
            return Err(bad(format!(
                "`{sign_name}` is {dtype:?} {shape:?}, expected I32 [out, ceil(in / 32)]"
            )));
        }
        let a = self.load_f32(&format!("{prefix}.weight_out_scale"))?;
        let b = self.load_f32(&format!("{prefix}.weight_in_scale"))?;
        let signs = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        self.release(&sign_name);
        OneBitLinear::new(a.len(), b.len(), signs, a, b, output_norm)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    fn load_packed(&self, prefix: &str) -> Result<Option<PackedLinear>, WeightError> {
        let packed_name = format!("{prefix}.weight_packed");
        if !self.index.contains_key(&packed_name) {
            return Ok(None);
        }
        let path = self.shards[self.index[&packed_name].shard].path.clone();
        let bad = |reason: String| WeightError::Other {
            path: path.clone(),
            reason: format!("{prefix}: {reason}"),
        };
        let bits = self.packed_bits.of(prefix).ok_or_else(|| {
            bad("packed weights but config.json has no pack-quantized num_bits for it".into())
        })?;
        let int_tensor = |name: &str| -> Result<Option<Vec<i64>>, WeightError> {
            match self.raw(name) {
                None => Ok(None),
                Some((dtype, _, bytes)) => {
                    let values = ints(dtype, bytes).map(Some).ok_or_else(|| {
                        bad(format!("`{name}` has dtype {dtype:?}, expected I32 or I64"))
                    });
                    self.release(name);
                    values
                }
            }
        };
        let shape = int_tensor(&format!("{prefix}.weight_shape"))?
            .ok_or_else(|| bad("missing weight_shape".into()))?;
        let [rows, cols] = shape[..] else {
            return Err(bad(format!("weight_shape {shape:?} is not 2-D")));
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let packed: Vec<i32> = int_tensor(&packed_name)?
            .unwrap_or_default()
            .into_iter()
            .map(|x| x as i32)
            .collect();
        let scale = self.load_f32(&format!("{prefix}.weight_scale"))?;
        let zero: Option<Vec<i32>> = int_tensor(&format!("{prefix}.weight_zero_point"))?
            .map(|z| z.into_iter().map(|x| x as i32).collect());
        let g_idx: Option<Vec<i32>> = int_tensor(&format!("{prefix}.weight_g_idx"))?
            .map(|g| g.into_iter().map(|x| x as i32).collect());
        let n_groups = scale
            .len()
            .checked_div(rows)
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("empty weight_scale".into()))?;
        let group_size = cols.div_ceil(n_groups);
        PackedLinear::from_compressed_tensors(
            bits,
            rows,
            cols,
            group_size,
            packed,
            scale,
            zero.as_deref(),
            g_idx,
        )
        .map(Some)
        .map_err(|e| bad(e.to_string()))
    }
}

/// `MADV_DONTNEED` on a read-only file mapping (see [`WeightSource::release_pages`]); a
/// failure only leaves the pages resident.
pub(crate) fn release_mapped_pages(mmap: &Mmap) {
    #[cfg(unix)]
    // SAFETY: the map is a read-only view of a file, never written through: dropping its
    // pages loses nothing, and any later read faults the file's same bytes back in.
    unsafe {
        let _ = mmap.unchecked_advise(memmap2::UncheckedAdvice::DontNeed);
    }
    #[cfg(not(unix))]
    let _ = mmap;
}

impl SafetensorsDir {
    /// Drops the resident pages of tensor `name` once it has been copied out: a model load
    /// reads every tensor once, and the pages it touched would otherwise stay in the RSS
    /// beside the copies until the end (Qwen2.5-Coder-0.5B's 888 MB 4-bit file made the peak
    /// twice the model). Reading the tensor again faults the same bytes back in.
    fn release(&self, name: &str) {
        if let Some(e) = self.index.get(name) {
            #[cfg(unix)]
            // SAFETY: as in `release_mapped_pages`: a read-only file mapping; no slice of this
            // tensor is alive (its bytes were copied out before the call).
            unsafe {
                let _ = self.shards[e.shard].mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    e.bytes.start,
                    e.bytes.len(),
                );
            }
        }
    }

    /// Raw bytes and dtype of a tensor, for packed (integer) weights that must not be
    /// converted to f32.
    pub fn raw(&self, name: &str) -> Option<(Dtype, Vec<usize>, &[u8])> {
        let e = self.index.get(name)?;
        let bytes = &self.shards[e.shard].mmap[e.bytes.clone()];
        Some((e.dtype, e.shape.clone(), bytes))
    }
}

#[cfg(test)]
mod packed_bits_tests {
    use super::*;

    #[test]
    fn widths_per_named_module_and_by_class() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            r#"{"quantization_config": {"format": "pack-quantized", "config_groups": {
                "group_0": {"targets": ["model.layers.0.mlp.up_proj"], "weights": {"num_bits": 4}},
                "group_1": {"targets": ["model.embed_tokens"], "weights": {"num_bits": 8}},
                "group_2": {"targets": ["Linear"], "weights": {"num_bits": 2}}}}}"#,
        )
        .unwrap();
        // As `open` reads them.
        let bits_of = |p: &Path| {
            quantization_config(p)
                .as_ref()
                .map(packed_bits)
                .unwrap_or_default()
        };
        let b = bits_of(&cfg);
        assert_eq!(b.of("model.layers.0.mlp.up_proj"), Some(4));
        assert_eq!(b.of("model.embed_tokens"), Some(8));
        assert_eq!(b.of("model.layers.3.self_attn.q_proj"), Some(2));
        std::fs::write(&cfg, r#"{"model_type": "llama"}"#).unwrap();
        assert_eq!(bits_of(&cfg).of("model.embed_tokens"), None);
        // A mixed checkpoint (as `quantize` writes W8A8 beside weight-only groups): only the
        // packed groups give widths, and the int8 group's class target is not a default.
        std::fs::write(
            &cfg,
            r#"{"quantization_config": {"format": "mixed-precision", "config_groups": {
                "group_0": {"format": "int-quantized", "targets": ["Linear"],
                            "weights": {"num_bits": 8}},
                "group_1": {"format": "pack-quantized", "targets": ["model.layers.0.mlp.up_proj"],
                            "weights": {"num_bits": 4}}}}}"#,
        )
        .unwrap();
        let b = bits_of(&cfg);
        assert_eq!(b.of("model.layers.0.mlp.up_proj"), Some(4));
        assert_eq!(b.of("model.layers.0.self_attn.q_proj"), None);
    }

    #[test]
    fn int8_groups_say_how_their_activations_are_quantized() {
        let q: serde_json::Value = serde_json::from_str(
            r#"{"format": "mixed-precision", "config_groups": {
                "group_0": {"format": "int-quantized", "targets": ["Linear"],
                            "input_activations": {"num_bits": 8, "symmetric": false}},
                "group_1": {"format": "int-quantized", "targets": ["model.layers.0.mlp.up_proj"],
                            "input_activations": {"num_bits": 8, "symmetric": true}},
                "group_2": {"format": "pack-quantized", "targets": ["model.layers.1.mlp.up_proj"],
                            "input_activations": {"symmetric": true}}}}"#,
        )
        .unwrap();
        let a = int8_activations(&q);
        assert_eq!(
            a.of("model.layers.0.mlp.up_proj"),
            Some(ActQuant::Symmetric)
        );
        assert_eq!(
            a.of("model.layers.3.mlp.down_proj"),
            Some(ActQuant::Asymmetric)
        );
        // Without `input_activations` (and in a config that is not int-quantized at all).
        let q: serde_json::Value = serde_json::from_str(
            r#"{"format": "int-quantized", "config_groups": {"group_0": {"targets": ["Linear"]}}}"#,
        )
        .unwrap();
        assert_eq!(int8_activations(&q).of("x.y"), Some(ActQuant::Symmetric));
        let q: serde_json::Value =
            serde_json::from_str(r#"{"format": "pack-quantized", "config_groups": {}}"#).unwrap();
        assert_eq!(int8_activations(&q).of("x.y"), None);
    }
}
