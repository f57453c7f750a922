//! In-memory weights: tiny seeded models for tests, and tensors produced by a pass before
//! they are written.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{WeightError, WeightSource};
use crate::config::{Arch, ModelConfig};

/// Named f32 tensors held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Packed linears by prefix (`model.layers.0.mlp.up_proj`); they take precedence over
    /// an f32 `{prefix}.weight`.
    pub packed: BTreeMap<String, crate::packed::PackedLinear>,
    /// OneBit linears by prefix; like `packed`, they take precedence over `{prefix}.weight`.
    pub onebit: BTreeMap<String, crate::packed::OneBitLinear>,
}

impl MemorySource {
    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "{name}: shape/data mismatch"
        );
        self.tensors.insert(name.to_owned(), (shape, data));
    }

    /// A random model with every tensor `config` needs, weights ~ U(−scale, scale) and norms
    /// near 1, reproducible from `seed`.
    pub fn random(config: &ModelConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut src = Self::default();
        let c = config;
        let d = c.hidden_size;
        let mut rand = |shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let data = (0..n)
                .map(|_| offset + rng.gen_range(-scale..scale))
                .collect();
            (shape, data)
        };
        let put = |src: &mut Self, name: String, t: (Vec<usize>, Vec<f32>)| {
            src.tensors.insert(name, t);
        };
        put(
            &mut src,
            "model.embed_tokens.weight".into(),
            rand(vec![c.vocab_size, d], 1.0, 0.0),
        );
        put(
            &mut src,
            "model.norm.weight".into(),
            rand(vec![d], 0.2, 1.0),
        );
        if !c.tie_word_embeddings {
            put(
                &mut src,
                "lm_head.weight".into(),
                rand(vec![c.vocab_size, d], 0.2, 0.0),
            );
        }
        let s = 1.0 / (d as f32).sqrt();
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            put(
                &mut src,
                format!("{p}.input_layernorm.weight"),
                rand(vec![d], 0.2, 1.0),
            );
            put(
                &mut src,
                format!("{p}.post_attention_layernorm.weight"),
                rand(vec![d], 0.2, 1.0),
            );
            for (name, out, inp) in c.decoder_linears() {
                put(
                    &mut src,
                    format!("{p}.{name}.weight"),
                    rand(vec![out, inp], s, 0.0),
                );
                if c.attention_bias
                    && matches!(
                        name,
                        "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj"
                    )
                {
                    put(
                        &mut src,
                        format!("{p}.{name}.bias"),
                        rand(vec![out], 0.5, 0.0),
                    );
                }
            }
        }
        src
    }
}

/// A small config for tests: GQA with 2 query heads per KV head.
pub fn tiny_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        hidden_size: 32,
        intermediate_size: 48,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
        vocab_size: 50,
        tie_word_embeddings: arch == Arch::Llama,
        attention_bias: arch == Arch::Qwen2,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

impl WeightSource for MemorySource {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.0.clone())
    }

    fn load_packed(
        &self,
        prefix: &str,
    ) -> Result<Option<crate::packed::PackedLinear>, WeightError> {
        Ok(self.packed.get(prefix).cloned())
    }

    fn load_onebit(
        &self,
        prefix: &str,
    ) -> Result<Option<crate::packed::OneBitLinear>, WeightError> {
        Ok(self.onebit.get(prefix).cloned())
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        self.tensors
            .get(name)
            .map(|t| t.1.clone())
            .ok_or_else(|| WeightError::Missing {
                path: "<memory>".into(),
                name: name.to_owned(),
            })
    }
}
