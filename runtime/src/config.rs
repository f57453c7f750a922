//! Model hyper-parameters, read from an HF `config.json` or from GGUF metadata, so that both
//! checkpoint kinds build the same model and a converted directory round-trips.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::gguf::GgufFile;

/// Which decoder family: they differ only in q/k/v bias and in how GGUF stores q/k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    /// The `model_type` string transformers uses.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    /// The `architectures[0]` class name transformers uses.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" | "LlamaForCausalLM" => Some(Arch::Llama),
            "qwen2" | "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            _ => None,
        }
    }
}

/// Everything the forward pass needs to know about a checkpoint's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always for Qwen2, optional for Llama).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// A config that cannot be read; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not valid JSON: {cause}")]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{path}: missing or invalid field `{field}`")]
    Field { path: PathBuf, field: String },
    #[error("{path}: unsupported architecture `{name}` (supported: llama, qwen2)")]
    Arch { path: PathBuf, name: String },
    #[error("{path}: unsupported {what}")]
    Unsupported { path: PathBuf, what: String },
}

/// The linears of a decoder block as HF names them under the block, in the order q, k, v,
/// o, gate, up, down.
pub const DECODER_LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl ModelConfig {
    /// Every linear of a decoder block as `(name, out, in)`, in [`DECODER_LINEARS`] order.
    pub fn decoder_linears(&self) -> [(&'static str, usize, usize); 7] {
        let (d, q, kv, i) = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        );
        let dims = [(q, d), (kv, d), (kv, d), (d, q), (i, d), (i, d), (d, i)];
        std::array::from_fn(|j| (DECODER_LINEARS[j], dims[j].0, dims[j].1))
    }

    /// Reads an HF `config.json` (LlamaForCausalLM / Qwen2ForCausalLM).
    pub fn from_hf_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            cause: source,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.to_owned(),
            cause: source,
        })?;
        Self::from_hf_json(&v, path)
    }

    /// Parses an HF config already in memory; `path` is only used in error messages.
    pub fn from_hf_json(v: &Value, path: &Path) -> Result<Self, ConfigError> {
        let field = |name: &str| ConfigError::Field {
            path: path.to_owned(),
            field: name.to_owned(),
        };
        let usize_of = |name: &str| -> Result<usize, ConfigError> {
            v.get(name)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| field(name))
        };
        let arch_name = v
            .get("model_type")
            .and_then(Value::as_str)
            .or_else(|| v.get("architectures")?.get(0)?.as_str())
            .ok_or_else(|| field("model_type"))?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| ConfigError::Arch {
            path: path.to_owned(),
            name: arch_name.to_owned(),
        })?;
        if let Some(scaling) = v.get("rope_scaling") {
            if !scaling.is_null() {
                return Err(ConfigError::Unsupported {
                    path: path.to_owned(),
                    what: format!("rope_scaling {scaling}"),
                });
            }
        }
        let hidden_size = usize_of("hidden_size")?;
        let num_heads = usize_of("num_attention_heads")?;
        let num_kv_heads = match v.get("num_key_value_heads") {
            None | Some(Value::Null) => num_heads,
            Some(_) => usize_of("num_key_value_heads")?,
        };
        let head_dim = match v.get("head_dim") {
            None | Some(Value::Null) => hidden_size / num_heads,
            Some(_) => usize_of("head_dim")?,
        };
        let rope_theta = v
            .get("rope_theta")
            .or_else(|| v.get("rope_parameters")?.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        let rms_norm_eps = v
            .get("rms_norm_eps")
            .and_then(Value::as_f64)
            .ok_or_else(|| field("rms_norm_eps"))?;
        let eos_token_ids = match v.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            _ => Vec::new(),
        };
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: usize_of("intermediate_size")?,
            num_layers: usize_of("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings: usize_of("max_position_embeddings")?,
            vocab_size: usize_of("vocab_size")?,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias: arch == Arch::Qwen2
                || v.get("attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            bos_token_id: v
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
            eos_token_ids,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads the `{arch}.*` keys of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ConfigError> {
        let path = g.path();
        let field = |name: &str| ConfigError::Field {
            path: path.to_owned(),
            field: name.to_owned(),
        };
        let arch_name = g
            .get_str("general.architecture")
            .ok_or_else(|| field("general.architecture"))?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| ConfigError::Arch {
            path: path.to_owned(),
            name: arch_name.to_owned(),
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let u = |k: &str| -> Result<usize, ConfigError> {
            g.get_u64(&key(k))
                .map(|x| x as usize)
                .ok_or_else(|| field(&key(k)))
        };
        let hidden_size = u("embedding_length")?;
        let num_heads = u("attention.head_count")?;
        let num_kv_heads = u("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = u("attention.key_length").unwrap_or(hidden_size / num_heads);
        let vocab_size = match g.get_u64(&key("vocab_size")) {
            Some(n) => n as usize,
            None => g
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .ok_or_else(|| field("tokenizer.ggml.tokens"))?,
        };
        let eos = g.get_u64("tokenizer.ggml.eos_token_id").map(|x| x as u32);
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_layers: u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: shortest_f64(
                g.get_f32(&key("attention.layer_norm_rms_epsilon"))
                    .ok_or_else(|| field(&key("attention.layer_norm_rms_epsilon")))?,
            ),
            rope_theta: shortest_f64(g.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0)),
            max_position_embeddings: u("context_length")?,
            vocab_size,
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            attention_bias: arch == Arch::Qwen2 || g.tensor("blk.0.attn_q.bias").is_some(),
            bos_token_id: g.get_u64("tokenizer.ggml.bos_token_id").map(|x| x as u32),
            eos_token_ids: eos.into_iter().collect(),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks head geometry, which a config can get wrong in ways a shape check misses.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |what: String| ConfigError::Unsupported {
            path: path.to_owned(),
            what,
        };
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return Err(bad(format!(
                "head counts: {} attention heads, {} key/value heads",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(bad(format!("head_dim {}", self.head_dim)));
        }
        Ok(())
    }

    /// The HF `config.json` for this model, so transformers can load a converted directory.
    pub fn to_hf_json(&self) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
            "use_cache": true,
        })
    }
}

/// The f64 a user would write for an f32 GGUF value (1e-5, not 9.999999747378752e-6), so
/// configs converted from GGUF read like the originals.
fn shortest_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smol_json() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "max_position_embeddings": 8192, "vocab_size": 49152,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2
        })
    }

    #[test]
    fn reads_hf_config_and_round_trips() {
        let cfg = ModelConfig::from_hf_json(&smol_json(), Path::new("config.json")).unwrap();
        assert_eq!(cfg.head_dim, 64);
        assert_eq!(cfg.eos_token_ids, vec![2]);
        assert!(!cfg.attention_bias);
        let back = ModelConfig::from_hf_json(&cfg.to_hf_json(), Path::new("x")).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn missing_field_names_file_and_field() {
        let mut v = smol_json();
        v.as_object_mut().unwrap().remove("intermediate_size");
        let err = ModelConfig::from_hf_json(&v, Path::new("/m/config.json")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/m/config.json: missing or invalid field `intermediate_size`"
        );
    }

    #[test]
    fn rejects_bad_head_counts() {
        let mut v = smol_json();
        v["num_key_value_heads"] = json!(4);
        let err = ModelConfig::from_hf_json(&v, Path::new("c.json")).unwrap_err();
        assert!(err
            .to_string()
            .contains("9 attention heads, 4 key/value heads"));
    }
}
