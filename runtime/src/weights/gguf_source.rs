//! GGUF tensors seen through HF names: llama.cpp renames every tensor and, for Llama,
//! permutes the rows of q/k so that its rope kernel sees interleaved pairs; we undo both so
//! the rest of the toolchain only ever sees the transformers layout.

use std::collections::BTreeMap;
use std::path::Path;

use super::{WeightError, WeightSource};
use crate::config::{Arch, ModelConfig};
use crate::gguf::GgufFile;

/// A GGUF model file exposed as HF-named f32 tensors (dequantized on load).
pub struct GgufSource {
    file: GgufFile,
    config: ModelConfig,
    /// HF name -> GGUF name
    names: BTreeMap<String, String>,
}

impl GgufSource {
    /// Opens and validates the file and reads its model config.
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&file)?;
        let names = file
            .tensors
            .iter()
            .filter_map(|t| Some((hf_name(&t.name)?, t.name.clone())))
            .collect();
        Ok(Self {
            file,
            config,
            names,
        })
    }

    /// The hyper-parameters stored in the GGUF metadata.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The underlying file, for its tokenizer metadata.
    pub fn gguf(&self) -> &GgufFile {
        &self.file
    }
}

/// Maps a GGUF tensor name to its HF name; `None` for tensors the HF layout has no place
/// for (e.g. precomputed rope frequencies).
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Inverse of llama.cpp's `permute` for q/k rows: GGUF row `h*hd + 2j + i` holds HF row
/// `h*hd + i*hd/2 + j` (i ∈ {0,1}). Works for weights (`cols` = in features) and biases
/// (`cols` = 1).
pub fn unpermute_rows(data: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let rows = data.len() / cols;
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..n_heads {
        for i in 0..2 {
            for j in 0..half {
                let src = h * hd + 2 * j + i;
                let dst = h * hd + i * half + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

impl GgufSource {
    fn gguf_name(&self, hf: &str) -> Option<String> {
        self.names.get(hf).cloned()
    }
}

impl WeightSource for GgufSource {
    fn release_pages(&self) {
        self.file.release_pages();
    }

    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let g = self.gguf_name(name)?;
        let t = self.file.tensor(&g)?;
        Some(t.dims.iter().rev().map(|&d| d as usize).collect())
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        let g = self.gguf_name(name).ok_or_else(|| WeightError::Missing {
            path: self.file.path().to_owned(),
            name: name.to_owned(),
        })?;
        let data = self.file.tensor_f32(&g)?;
        self.file.release_tensor(&g);
        if self.config.arch != Arch::Llama {
            return Ok(data);
        }
        let heads = if name.ends_with("self_attn.q_proj.weight")
            || name.ends_with("self_attn.q_proj.bias")
        {
            self.config.num_heads
        } else if name.ends_with("self_attn.k_proj.weight")
            || name.ends_with("self_attn.k_proj.bias")
        {
            self.config.num_kv_heads
        } else {
            return Ok(data);
        };
        let cols = if name.ends_with(".bias") {
            1
        } else {
            self.config.hidden_size
        };
        Ok(unpermute_rows(&data, heads, cols))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's permute, written the way its Python does it (reshape/swapaxes), to check
    /// that `unpermute_rows` is its exact inverse.
    fn permute(rows: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
        let hd = rows.len() / cols / n_heads;
        let mut out = vec![0.0; rows.len()];
        // reshape(n_head, 2, hd/2, cols).swapaxes(1, 2) -> (n_head, hd/2, 2, cols)
        for h in 0..n_heads {
            for i in 0..2 {
                for j in 0..hd / 2 {
                    let src = h * hd + i * (hd / 2) + j;
                    let dst = h * hd + j * 2 + i;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&rows[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, hd, cols) = (3, 8, 5);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let gguf = permute(&hf, heads, cols);
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, heads, cols), hf);
    }

    #[test]
    fn maps_names() {
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").unwrap(),
            "model.layers.12.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(hf_name("rope_freqs.weight").is_none());
    }
}
