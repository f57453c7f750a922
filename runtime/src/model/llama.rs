//! The whole decoder: embeddings, N pre-norm blocks (attention + SwiGLU MLP), final norm and
//! the (possibly tied) vocabulary projection.

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;

use super::attention::Attention;
use super::host_step::RowLayout;
use super::kv_cache::KvCache;
use super::linear::{DenseWeight, HostWeight, Linear, LinearBackend};
use super::rope::Rope;
use crate::config::ModelConfig;
use crate::weights::{load_checked, WeightError, WeightSource};

/// A model that could not be built from its weights.
pub type LoadError = WeightError;

/// The gated MLP `down(silu(gate(x)) · up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp<B: LinearBackend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: LinearBackend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(B::silu_mul(gate, self.up_proj.forward(x)))
    }
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct DecoderLayer<B: LinearBackend> {
    pub input_layernorm: Tensor<B, 1>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: Tensor<B, 1>,
    pub mlp: Mlp<B>,
}

/// A Llama-family causal language model.
#[derive(Debug, Clone)]
pub struct Llama<B: LinearBackend> {
    pub config: ModelConfig,
    /// `[vocab, hidden]`, also the lm_head when tied.
    pub embed_tokens: B::Weight,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: Tensor<B, 1>,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    pub rope: Rope<B>,
}

struct Loader<'a, B: Backend> {
    src: &'a dyn WeightSource,
    origin: &'a Path,
    device: &'a B::Device,
}

impl<B: LinearBackend> Loader<'_, B> {
    fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let data = load_checked(self.src, self.origin, name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(data, shape), self.device))
    }

    fn weight(&self, name: &str, out: usize, inp: usize) -> Result<B::Weight, LoadError> {
        let data = load_checked(self.src, self.origin, name, &[out, inp])?;
        Ok(B::upload(
            HostWeight::Dense(DenseWeight::new(data, out, inp)),
            self.device,
        ))
    }

    /// `w`, stored under `name`, uploaded once its shape is checked against `[out, inp]`.
    fn checked(
        &self,
        name: String,
        w: HostWeight,
        out: usize,
        inp: usize,
    ) -> Result<B::Weight, LoadError> {
        let (rows, cols) = w.dims();
        if (rows, cols) != (out, inp) {
            return Err(WeightError::Shape {
                path: self.origin.to_owned(),
                name,
                actual: vec![rows, cols],
                expected: vec![out, inp],
            });
        }
        Ok(B::upload(w, self.device))
    }

    /// The packed weight `{prefix}.weight_packed`, if the checkpoint has one.
    fn packed(&self, prefix: &str, out: usize, inp: usize) -> Result<Option<B::Weight>, LoadError> {
        let Some(p) = self.src.load_packed(prefix)? else {
            return Ok(None);
        };
        let name = format!("{prefix}.weight_packed");
        self.checked(name, HostWeight::Packed(Arc::new(p)), out, inp)
            .map(Some)
    }

    fn linear(
        &self,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear<B>, LoadError> {
        let weight = if let Some(w) = self.src.load_onebit(prefix)? {
            let name = format!("{prefix}.weight_sign");
            self.checked(name, HostWeight::OneBit(Arc::new(w)), out, inp)?
        } else if let Some(w) = self.packed(prefix, out, inp)? {
            w
        } else if let Some(w) = self.src.load_int8(prefix)? {
            let name = format!("{prefix}.weight");
            self.checked(name, HostWeight::Int8(Arc::new(w)), out, inp)?
        } else {
            self.weight(&format!("{prefix}.weight"), out, inp)?
        };
        Ok(Linear {
            weight,
            bias: if bias {
                Some(self.tensor(&format!("{prefix}.bias"), [out])?)
            } else {
                None
            },
        })
    }
}

impl<B: LinearBackend> Llama<B> {
    /// Builds the model from HF-named weights; `origin` names the checkpoint in errors.
    pub fn load(
        config: &ModelConfig,
        src: &dyn WeightSource,
        origin: &Path,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let c = config;
        let l = Loader::<B> {
            src,
            origin,
            device,
        };
        let (d, hd) = (c.hidden_size, c.head_dim);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let bias = c.attention_bias;
            layers.push(DecoderLayer {
                input_layernorm: l.tensor(&format!("{p}.input_layernorm.weight"), [d])?,
                self_attn: Attention {
                    q_proj: l.linear(
                        &format!("{p}.self_attn.q_proj"),
                        c.num_heads * hd,
                        d,
                        bias,
                    )?,
                    k_proj: l.linear(
                        &format!("{p}.self_attn.k_proj"),
                        c.num_kv_heads * hd,
                        d,
                        bias,
                    )?,
                    v_proj: l.linear(
                        &format!("{p}.self_attn.v_proj"),
                        c.num_kv_heads * hd,
                        d,
                        bias,
                    )?,
                    o_proj: l.linear(
                        &format!("{p}.self_attn.o_proj"),
                        d,
                        c.num_heads * hd,
                        false,
                    )?,
                    num_heads: c.num_heads,
                    num_kv_heads: c.num_kv_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: l
                    .tensor(&format!("{p}.post_attention_layernorm.weight"), [d])?,
                mlp: Mlp {
                    gate_proj: l.linear(
                        &format!("{p}.mlp.gate_proj"),
                        c.intermediate_size,
                        d,
                        false,
                    )?,
                    up_proj: l.linear(
                        &format!("{p}.mlp.up_proj"),
                        c.intermediate_size,
                        d,
                        false,
                    )?,
                    down_proj: l.linear(
                        &format!("{p}.mlp.down_proj"),
                        d,
                        c.intermediate_size,
                        false,
                    )?,
                },
            });
        }
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(l.linear("lm_head", c.vocab_size, d, false)?)
        };
        Ok(Self {
            config: c.clone(),
            // Packed when a recipe quantized the (tied) vocabulary projection: rows are then
            // dequantized for the lookup and the head runs the packed kernels.
            embed_tokens: match l.packed("model.embed_tokens", c.vocab_size, d)? {
                Some(w) => w,
                None => l.weight("model.embed_tokens.weight", c.vocab_size, d)?,
            },
            layers,
            norm: l.tensor("model.norm.weight", [d])?,
            lm_head,
            rope: Rope::new(c.rope_theta, hd, c.max_position_embeddings, device),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.norm.device()
    }

    /// Final hidden states `[b, t, hidden]` for `tokens` (`[b, t]`). With a cache, the tokens
    /// continue the cached sequence and the cache is extended; without one they start at 0.
    /// One sequence continuing a host cache (speculative verification, a chat prompt), or
    /// one sequence without a cache on a backend whose caches live on the host (perplexity
    /// windows, scoring), takes the backend's fused pass where it has one.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<B, 3> {
        let cache = match cache {
            Some(c) => match Self::host_sequence_ids(&tokens, c) {
                Some(ids) => match B::forward_rows_fused(self, &ids, RowLayout::Chain, c) {
                    Some(h) => return self.host_rows(h, ids.len()),
                    None => Some(c),
                },
                None => Some(c),
            },
            None if tokens.dims()[0] == 1 && !B::KV_ON_DEVICE => {
                // A throwaway cache: the fused pass's causal, blocked attention needs one,
                // and it costs less than burn's per-op path over the same rows.
                let mut c = self.new_cache(tokens.dims()[1]);
                if let Some(ids) = Self::host_sequence_ids(&tokens, &c) {
                    if let Some(h) = B::forward_rows_fused(self, &ids, RowLayout::Chain, &mut c) {
                        return self.host_rows(h, ids.len());
                    }
                }
                None
            }
            None => None,
        };
        self.forward_hidden_generic(tokens, cache)
    }

    /// The ids of `tokens` when they are one sequence continuing a host `cache`: what the
    /// backend's fused passes take.
    fn host_sequence_ids(tokens: &Tensor<B, 2, Int>, cache: &KvCache) -> Option<Vec<u32>> {
        (tokens.dims()[0] == 1 && !cache.is_on_device())
            .then(|| tokens.to_data().iter::<i64>().map(|t| t as u32).collect())
    }

    /// `[1, t, hidden]` on this model's device from host rows.
    fn host_rows(&self, rows: Vec<f32>, t: usize) -> Tensor<B, 3> {
        Tensor::from_data(
            TensorData::new(rows, [1, t, self.config.hidden_size]),
            &self.device(),
        )
    }

    /// [`Self::forward_hidden`] through the layer-by-layer tensor path only (the reference
    /// the fused pass is checked against).
    pub fn forward_hidden_generic(
        &self,
        tokens: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<B, 3> {
        let t = tokens.dims()[1];
        let start = cache.as_ref().map_or(0, |c| c.len());
        assert!(
            start + t <= self.rope.max_positions(),
            "sequence of {} positions exceeds the model context {}",
            start + t,
            self.rope.max_positions()
        );
        if let Some(c) = cache.as_deref_mut() {
            c.reserve(start + t);
        }
        let x = self.embed(tokens);
        let out = self.decoder_stack(x, None, |i, attn, h| {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            attn.forward(h, &self.rope, start, layer_cache)
        });
        if let Some(c) = cache {
            c.advance(t);
        }
        out
    }

    /// Embeddings `[b, t, hidden]` of token ids `[b, t]`.
    fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, t] = tokens.dims();
        let ids: Vec<u32> = tokens
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .expect("integer token ids")
            .into_iter()
            .map(|x| x as u32)
            .collect();
        B::gather_rows(&ids, &self.embed_tokens, &self.device()).reshape([
            b,
            t,
            self.config.hidden_size,
        ])
    }

    /// The decoder blocks and the final norm over embedded `x`, with each block's attention
    /// done by `attend(layer index, attention, normed input)`: the one place the block
    /// structure lives, whatever the attention pattern (prefix, batched decode, tree).
    fn decoder_stack(
        &self,
        mut x: Tensor<B, 3>,
        mut layer_outputs: Option<&mut Vec<Tensor<B, 3>>>,
        mut attend: impl FnMut(usize, &Attention<B>, Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let eps = self.config.rms_norm_eps;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = B::rms_norm(x.clone(), &layer.input_layernorm, eps);
            x = x + attend(i, &layer.self_attn, h);
            let h = B::rms_norm(x.clone(), &layer.post_attention_layernorm, eps);
            x = x + layer.mlp.forward(h);
            if let Some(outs) = layer_outputs.as_deref_mut() {
                outs.push(x.clone());
            }
        }
        B::rms_norm(x, &self.norm, eps)
    }

    /// Final hidden states `[n, 1, hidden]` for one new token of each of `n` sequences, each
    /// continuing its own cache (continuous batching: sequences of different lengths share
    /// the weight reads of every linear).
    pub fn forward_decode_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Tensor<B, 3> {
        // Both paths check one cache per token.
        let n = tokens.len();
        if n > 0 && caches.iter().all(|c| !c.is_on_device()) {
            if let Some(h) = B::forward_decode_batch_fused(self, tokens, caches) {
                return self
                    .host_rows(h, n)
                    .reshape([n, 1, self.config.hidden_size]);
            }
        }
        self.forward_decode_batch_generic(tokens, caches)
    }

    /// [`Self::forward_decode_batch`] through the layer-by-layer tensor path only (the
    /// reference the fused step is checked against, and the device caches' path).
    pub fn forward_decode_batch_generic(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Tensor<B, 3> {
        let n = tokens.len();
        assert_eq!(n, caches.len(), "one cache per token");
        for c in caches.iter_mut() {
            assert!(
                c.len() < self.rope.max_positions(),
                "sequence of {} positions exceeds the model context {}",
                c.len() + 1,
                self.rope.max_positions()
            );
            let len = c.len();
            c.reserve(len + 1);
        }
        let d = self.config.hidden_size;
        let x = B::gather_rows(tokens, &self.embed_tokens, &self.device()).reshape([n, 1, d]);
        let out = self.decoder_stack(x, None, |i, attn, h| {
            attn.forward_decode_batch(h, &self.rope, caches, i)
        });
        for c in caches.iter_mut() {
            c.advance(1);
        }
        out
    }

    /// Final hidden states `[1, n, hidden]` of a Medusa candidate tree after the cached
    /// prefix (see `Attention::forward_tree`). The cache grows by `n` positions, in node
    /// order; keep the accepted path with `KvCache::keep_rows`.
    pub fn forward_tree(
        &self,
        tokens: &[u32],
        depths: &[usize],
        mask: &[bool],
        cache: &mut KvCache,
    ) -> Tensor<B, 3> {
        if !cache.is_on_device() {
            let layout = RowLayout::Tree { depths, mask };
            if let Some(h) = B::forward_rows_fused(self, tokens, layout, cache) {
                return self.host_rows(h, tokens.len());
            }
        }
        self.forward_tree_generic(tokens, depths, mask, cache)
    }

    /// [`Self::forward_tree`] through the layer-by-layer tensor path only (the reference the
    /// fused pass is checked against).
    pub fn forward_tree_generic(
        &self,
        tokens: &[u32],
        depths: &[usize],
        mask: &[bool],
        cache: &mut KvCache,
    ) -> Tensor<B, 3> {
        let n = tokens.len();
        let start = cache.len();
        let deepest = depths.iter().max().copied().unwrap_or(0);
        assert!(
            start + n <= self.rope.max_positions() && start + deepest < self.rope.max_positions(),
            "tree of {n} nodes after {start} positions exceeds the model context {}",
            self.rope.max_positions()
        );
        cache.reserve(start + n);
        let d = self.config.hidden_size;
        let x = B::gather_rows(tokens, &self.embed_tokens, &self.device()).reshape([1, n, d]);
        let out = self.decoder_stack(x, None, |i, attn, h| {
            attn.forward_tree(h, &self.rope, cache, i, depths, mask)
        });
        cache.advance(n);
        out
    }

    /// Vocabulary logits `[b, t, vocab]` from final hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, t, d] = hidden.dims();
                B::apply_linear(hidden.reshape([b * t, d]), &self.embed_tokens).reshape([
                    b,
                    t,
                    self.config.vocab_size,
                ])
            }
        }
    }

    /// Logits of the last position only, as a host vector: what generation needs after a
    /// prompt. The vocabulary projection of the other positions is never computed (for
    /// SmolLM2 that is a fifth of a prefill's FLOPs).
    pub fn forward_last(&self, tokens: Tensor<B, 2, Int>, cache: Option<&mut KvCache>) -> Vec<f32> {
        let cache = match cache {
            Some(c) => match Self::host_sequence_ids(&tokens, c) {
                Some(ids) => match B::forward_last_fused(self, &ids, c) {
                    Some(logits) => return logits,
                    None => Some(c),
                },
                None => Some(c),
            },
            None => None,
        };
        self.forward_last_generic(tokens, cache)
    }

    /// [`Self::forward_last`] through the layer-by-layer tensor path only (the reference the
    /// fused decode step is checked against).
    pub fn forward_last_generic(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache>,
    ) -> Vec<f32> {
        let hidden = self.forward_hidden_generic(tokens, cache);
        let [b, t, d] = hidden.dims();
        assert_eq!(b, 1, "forward_last takes one sequence");
        crate::generate::host_f32(self.logits(hidden.slice([0..1, t - 1..t, 0..d])))
    }

    /// Logits `[b, t, vocab]` for windows `tokens` run from position 0, and every decoder
    /// block's output `[b, t, hidden]` (the residual stream after the block): what a
    /// distillation teacher provides.
    pub fn forward_with_layer_outputs(
        &self,
        tokens: Tensor<B, 2, Int>,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let x = self.embed(tokens);
        let mut outs = Vec::with_capacity(self.layers.len());
        let hidden = self.decoder_stack(x, Some(&mut outs), |_, attn, h| {
            attn.forward(h, &self.rope, 0, None)
        });
        (self.logits(hidden), outs)
    }

    /// Logits for every position of `tokens`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, cache: Option<&mut KvCache>) -> Tensor<B, 3> {
        self.logits(self.forward_hidden(tokens, cache))
    }

    /// Logits `[len, vocab]` (flattened) of one sequence of token ids run from position 0:
    /// the comparison tests and reference checks make everywhere.
    pub fn logits_of(&self, ids: &[u32]) -> Vec<f32> {
        self.forward(crate::generate::token_row(ids, &self.device()), None)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 logits")
    }

    /// A cache that starts with room for `initial` positions and grows up to `max` (both
    /// capped at the model context), on the device where the backend keeps caches there.
    pub fn new_growable_cache(&self, initial: usize, max: usize) -> KvCache {
        let c = &self.config;
        let max = max.min(self.rope.max_positions());
        let cache = KvCache::growable(c.num_layers, initial, max, c.num_kv_heads, c.head_dim);
        if B::KV_ON_DEVICE {
            cache.on_device()
        } else {
            cache
        }
    }

    /// A cache sized for `capacity` positions of this model, on the backend's device where
    /// it keeps caches there (`LinearBackend::KV_ON_DEVICE`).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let c = &self.config;
        let capacity = capacity.min(self.rope.max_positions());
        let cache = KvCache::new(c.num_layers, capacity, c.num_kv_heads, c.head_dim);
        if B::KV_ON_DEVICE {
            cache.on_device()
        } else {
            cache
        }
    }
}
