//! The burn forward pass against a plain f64 implementation of the transformers definition
//! (Llama and Qwen2), on tiny seeded models: full-sequence logits, and incremental decoding
//! through the KV cache.

use std::path::Path;

use burn::prelude::*;
use lmq_runtime::config::{Arch, ModelConfig};
use lmq_runtime::model::Llama;
use lmq_runtime::weights::{tiny_config, MemorySource, WeightSource};
use lmq_runtime::Cpu;

/// Max |a−b| / max|b| allowed between the f32 burn pass and the f64 reference.
const FORWARD_REL_TOL: f64 = 1e-4;

struct Ref<'a> {
    c: &'a ModelConfig,
    w: &'a MemorySource,
}

impl Ref<'_> {
    fn t(&self, name: &str) -> Vec<f64> {
        self.w
            .load_f32(name)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// y[t][o] = Σ_i x[t][i] W[o][i] + b[o]
    fn linear(&self, x: &[Vec<f64>], name: &str, bias: bool) -> Vec<Vec<f64>> {
        let w = self.t(&format!("{name}.weight"));
        let shape = self.w.shape(&format!("{name}.weight")).unwrap();
        let (out, inp) = (shape[0], shape[1]);
        let b = if bias {
            self.t(&format!("{name}.bias"))
        } else {
            vec![0.0; out]
        };
        x.iter()
            .map(|row| {
                (0..out)
                    .map(|o| b[o] + (0..inp).map(|i| row[i] * w[o * inp + i]).sum::<f64>())
                    .collect()
            })
            .collect()
    }

    fn rms(&self, x: &[Vec<f64>], name: &str) -> Vec<Vec<f64>> {
        let w = self.t(name);
        x.iter()
            .map(|r| {
                let ms = r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64;
                let inv = 1.0 / (ms + self.c.rms_norm_eps).sqrt();
                r.iter().zip(&w).map(|(v, g)| v * inv * g).collect()
            })
            .collect()
    }

    fn rope(&self, x: &mut [f64], pos: usize) {
        let hd = self.c.head_dim;
        let half = hd / 2;
        for head in x.chunks_mut(hd) {
            let orig = head.to_vec();
            for i in 0..half {
                let freq = 1.0 / self.c.rope_theta.powf(2.0 * i as f64 / hd as f64);
                let (s, c) = (pos as f64 * freq).sin_cos();
                head[i] = orig[i] * c - orig[i + half] * s;
                head[i + half] = orig[i + half] * c + orig[i] * s;
            }
        }
    }

    fn forward(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let c = self.c;
        let d = c.hidden_size;
        let emb = self.t("model.embed_tokens.weight");
        let mut x: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| emb[t as usize * d..(t as usize + 1) * d].to_vec())
            .collect();
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let h = self.rms(&x, &format!("{p}.input_layernorm.weight"));
            let mut q = self.linear(&h, &format!("{p}.self_attn.q_proj"), c.attention_bias);
            let mut k = self.linear(&h, &format!("{p}.self_attn.k_proj"), c.attention_bias);
            let v = self.linear(&h, &format!("{p}.self_attn.v_proj"), c.attention_bias);
            for (pos, (qr, kr)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
                self.rope(qr, pos);
                self.rope(kr, pos);
            }
            let mut attn = vec![vec![0.0; nh * hd]; tokens.len()];
            for (tq, out) in attn.iter_mut().enumerate() {
                for head in 0..nh {
                    let kvh = head / (nh / nkv);
                    let scores: Vec<f64> = (0..=tq)
                        .map(|tk| {
                            (0..hd)
                                .map(|i| q[tq][head * hd + i] * k[tk][kvh * hd + i])
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for (tk, s) in scores.iter().enumerate() {
                        let p = (s - m).exp() / z;
                        for i in 0..hd {
                            out[head * hd + i] += p * v[tk][kvh * hd + i];
                        }
                    }
                }
            }
            let o = self.linear(&attn, &format!("{p}.self_attn.o_proj"), false);
            x.iter_mut()
                .zip(&o)
                .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
            let h = self.rms(&x, &format!("{p}.post_attention_layernorm.weight"));
            let g = self.linear(&h, &format!("{p}.mlp.gate_proj"), false);
            let u = self.linear(&h, &format!("{p}.mlp.up_proj"), false);
            let act: Vec<Vec<f64>> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| {
                    g.iter()
                        .zip(u)
                        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                        .collect()
                })
                .collect();
            let dn = self.linear(&act, &format!("{p}.mlp.down_proj"), false);
            x.iter_mut()
                .zip(&dn)
                .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        }
        let h = self.rms(&x, "model.norm.weight");
        let head = if c.tie_word_embeddings {
            "model.embed_tokens"
        } else {
            "lm_head"
        };
        self.linear(&h, head, false)
    }
}

fn load(c: &ModelConfig, w: &MemorySource) -> Llama<Cpu> {
    Llama::load(c, w, Path::new("<memory>"), &Default::default()).unwrap()
}

fn logits_of(model: &Llama<Cpu>, tokens: &[u32]) -> Vec<f32> {
    model.logits_of(tokens)
}

fn max_rel(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().map(|x| x.abs()).fold(0.0, f64::max);
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
        / scale
}

const TOKENS: [u32; 11] = [1, 7, 3, 49, 0, 22, 22, 5, 31, 8, 17];

fn check_full_forward(arch: Arch) {
    let c = tiny_config(arch);
    let w = MemorySource::random(&c, 42);
    let got = logits_of(&load(&c, &w), &TOKENS);
    let want: Vec<f64> = Ref { c: &c, w: &w }.forward(&TOKENS).concat();
    let err = max_rel(&got, &want);
    assert!(err < FORWARD_REL_TOL, "{arch:?}: max relative error {err}");
}

#[test]
fn llama_forward_matches_f64_reference() {
    check_full_forward(Arch::Llama);
}

#[test]
fn qwen2_forward_matches_f64_reference() {
    check_full_forward(Arch::Qwen2);
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let c = tiny_config(arch);
        let w = MemorySource::random(&c, 7);
        let model = load(&c, &w);
        let full = logits_of(&model, &TOKENS);
        let v = c.vocab_size;
        let mut cache = model.new_cache(TOKENS.len());
        // A 4-token prefill, then one token at a time, then a 3-token chunk.
        let mut pos = 0;
        for chunk in [4usize, 1, 1, 1, 1, 3] {
            let ids: Vec<i32> = TOKENS[pos..pos + chunk].iter().map(|&t| t as i32).collect();
            let input = Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(ids, [1, chunk]),
                &Default::default(),
            );
            let got = model
                .forward(input, Some(&mut cache))
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            let want = &full[pos * v..(pos + chunk) * v];
            let err = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-4, "{arch:?} chunk at {pos}: max abs diff {err}");
            pos += chunk;
        }
        assert_eq!(cache.len(), TOKENS.len());
    }
}
