//! One decoder layer (Llama/Qwen2) on plain f32 slices, split at the inputs of its linears so
//! the pipeline can capture each linear's calibration inputs and swap in quantized weights
//! between steps. Numerically it is the runtime's forward (`lmq_runtime::model`): the same
//! RMSNorm, HF rotary tables, causal GQA attention and SiLU-gated MLP, with the same f32
//! kernels; a test checks a stack of these against the runtime's logits.

use std::sync::Arc;

use anyhow::{Context, Result};
use lmq_runtime::config::ModelConfig;
use lmq_runtime::kernels::attention::{attention_cached, CachedAttnShape};
use lmq_runtime::kernels::dense_f32::matmul_f32_nt_blocked;
use lmq_runtime::model::host_ops::{add_in_place, silu_mul_in_place};
use lmq_runtime::model::rope_tables;
use lmq_runtime::weights::WeightSource;

use crate::device::QuantDevice;

/// A linear's weight `[out, in]` and optional bias, as the pipeline holds it: the original
/// weights until quantized, the dequantized ones after.
#[derive(Debug, Clone)]
pub struct HostLinear {
    pub name: String,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub out: usize,
    pub inp: usize,
    /// Where [`HostLinear::apply`] multiplies (`None`: on the host).
    pub device: Option<Arc<dyn QuantDevice>>,
}

impl HostLinear {
    fn load(
        src: &dyn WeightSource,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let weight = src
            .load_f32(&name)
            .with_context(|| format!("loading {name}"))?;
        anyhow::ensure!(
            weight.len() == out * inp,
            "{name}: expected {out}x{inp} values, found {}",
            weight.len()
        );
        let bias = if bias {
            let b = src
                .load_f32(&format!("{prefix}.bias"))
                .with_context(|| format!("loading {prefix}.bias"))?;
            anyhow::ensure!(b.len() == out, "{prefix}.bias: expected {out} values");
            Some(b)
        } else {
            None
        };
        Ok(Self {
            name,
            weight,
            bias,
            out,
            inp,
            device: None,
        })
    }

    /// `x·Wᵀ + b` for `x` `[t, in]`.
    pub fn apply(&self, x: &[f32], t: usize) -> Vec<f32> {
        let mut y = match &self.device {
            Some(d) => d.matmul_nt(x, &self.weight, t, self.inp, self.out),
            // Blocked GEMM for any window length: the sums a device's matmul runs, so the
            // host and device pipelines pick the same codes (tests/pipeline.rs).
            None => matmul_f32_nt_blocked(x, &self.weight, t, self.inp, self.out),
        };
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out) {
                for (v, bv) in row.iter_mut().zip(b) {
                    *v += bv;
                }
            }
        }
        y
    }
}

/// Which linears read the same input, in true-sequential order: each group is quantized
/// only after the groups before it, with inputs recomputed through their quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearGroup {
    /// q/k/v: input is the attention norm's output.
    Qkv,
    /// o_proj: input is the attention output.
    AttnOut,
    /// gate/up: input is the MLP norm's output.
    MlpIn,
    /// down_proj: input is SiLU(gate)·up.
    MlpOut,
}

impl LinearGroup {
    /// The four groups in the order they are quantized.
    pub const ORDER: [LinearGroup; 4] = [Self::Qkv, Self::AttnOut, Self::MlpIn, Self::MlpOut];
}

/// Shapes and constants shared by all layers.
#[derive(Debug, Clone)]
pub struct LayerGeometry {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub eps: f32,
    cos: Vec<f32>,
    sin: Vec<f32>,
    positions: usize,
}

impl LayerGeometry {
    /// Geometry of `config`'s layers, with rotary tables for `positions` positions.
    pub fn new(config: &ModelConfig, positions: usize) -> Self {
        let (cos, sin) = rope_tables(config.rope_theta, config.head_dim, positions);
        Self {
            hidden: config.hidden_size,
            heads: config.num_heads,
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            ffn: config.intermediate_size,
            eps: config.rms_norm_eps as f32,
            cos,
            sin,
            positions,
        }
    }
}

/// One decoder layer's weights.
#[derive(Debug, Clone)]
pub struct HostLayer {
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    pub q: HostLinear,
    pub k: HostLinear,
    pub v: HostLinear,
    pub o: HostLinear,
    pub gate: HostLinear,
    pub up: HostLinear,
    pub down: HostLinear,
}

impl HostLayer {
    /// Loads layer `i` of a Llama-family checkpoint.
    pub fn load(src: &dyn WeightSource, config: &ModelConfig, i: usize) -> Result<Self> {
        let p = format!("model.layers.{i}");
        let (d, hd, f) = (
            config.hidden_size,
            config.head_dim,
            config.intermediate_size,
        );
        let (qd, kvd) = (config.num_heads * hd, config.num_kv_heads * hd);
        let bias = config.attention_bias;
        let norm = |n: &str| -> Result<Vec<f32>> {
            let name = format!("{p}.{n}.weight");
            let w = src
                .load_f32(&name)
                .with_context(|| format!("loading {name}"))?;
            anyhow::ensure!(
                w.len() == d,
                "{name}: expected {d} values, found {}",
                w.len()
            );
            Ok(w)
        };
        Ok(Self {
            input_norm: norm("input_layernorm")?,
            post_norm: norm("post_attention_layernorm")?,
            q: HostLinear::load(src, &format!("{p}.self_attn.q_proj"), qd, d, bias)?,
            k: HostLinear::load(src, &format!("{p}.self_attn.k_proj"), kvd, d, bias)?,
            v: HostLinear::load(src, &format!("{p}.self_attn.v_proj"), kvd, d, bias)?,
            o: HostLinear::load(src, &format!("{p}.self_attn.o_proj"), d, qd, false)?,
            gate: HostLinear::load(src, &format!("{p}.mlp.gate_proj"), f, d, false)?,
            up: HostLinear::load(src, &format!("{p}.mlp.up_proj"), f, d, false)?,
            down: HostLinear::load(src, &format!("{p}.mlp.down_proj"), d, f, false)?,
        })
    }

    /// Runs the layer's linear products on `device` (`None`: on the host).
    pub fn set_device(&mut self, device: Option<Arc<dyn QuantDevice>>) {
        for l in [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ] {
            l.device = device.clone();
        }
    }

    /// The linears of a group.
    pub fn group_mut(&mut self, g: LinearGroup) -> Vec<&mut HostLinear> {
        match g {
            LinearGroup::Qkv => vec![&mut self.q, &mut self.k, &mut self.v],
            LinearGroup::AttnOut => vec![&mut self.o],
            LinearGroup::MlpIn => vec![&mut self.gate, &mut self.up],
            LinearGroup::MlpOut => vec![&mut self.down],
        }
    }

    /// The current value of the layer's tensor `name` (a full checkpoint name under
    /// `prefix`, e.g. `model.layers.3.mlp.up_proj.weight`), for writing what a pass changed.
    pub fn tensor(&self, prefix: &str, name: &str) -> Option<&[f32]> {
        match name.strip_prefix(prefix)?.strip_prefix('.')? {
            "input_layernorm.weight" => return Some(&self.input_norm),
            "post_attention_layernorm.weight" => return Some(&self.post_norm),
            _ => {}
        }
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
        .into_iter()
        .find_map(|l| {
            let base = l.name.trim_end_matches(".weight");
            if l.name == name {
                Some(l.weight.as_slice())
            } else if name.strip_prefix(base) == Some(".bias") {
                l.bias.as_deref()
            } else {
                None
            }
        })
    }

    /// Input of the q/k/v projections: RMSNorm of the residual stream `x` `[t, hidden]`.
    pub fn attn_norm(&self, g: &LayerGeometry, x: &[f32]) -> Vec<f32> {
        rms_norm(x, &self.input_norm, g.eps)
    }

    /// Input of o_proj: causal attention over the window (positions from 0) of the
    /// projections of `xn` (the attention norm's output), heads concatenated, `[t, heads·hd]`.
    pub fn attention(&self, g: &LayerGeometry, xn: &[f32]) -> Vec<f32> {
        let t = xn.len() / g.hidden;
        assert!(t <= g.positions, "window of {t} exceeds the rotary tables");
        let hd = g.head_dim;
        let q = self.q.apply(xn, t);
        let k = self.k.apply(xn, t);
        let v = self.v.apply(xn, t);
        let qh = heads_major(&q, t, g.heads, hd, Some((&g.cos, &g.sin)));
        let kh = heads_major(&k, t, g.kv_heads, hd, Some((&g.cos, &g.sin)));
        let vh = heads_major(&v, t, g.kv_heads, hd, None);
        let shape = CachedAttnShape {
            heads: g.heads,
            kv_heads: g.kv_heads,
            head_dim: hd,
            queries: t,
            len: t,
            capacity: t,
        };
        attention_cached(&qh, &kh, &vh, shape)
    }

    /// Residual stream after attention: `x + o_proj(attn)`.
    pub fn attn_residual(&self, x: &[f32], attn: &[f32]) -> Vec<f32> {
        let t = attn.len() / self.o.inp;
        let mut h = self.o.apply(attn, t);
        add_in_place(&mut h, x);
        h
    }

    /// Input of gate/up: RMSNorm of the post-attention residual `h`.
    pub fn mlp_norm(&self, g: &LayerGeometry, h: &[f32]) -> Vec<f32> {
        rms_norm(h, &self.post_norm, g.eps)
    }

    /// Input of down_proj: `SiLU(gate(hn)) · up(hn)`, `[t, ffn]`.
    pub fn mlp_act(&self, hn: &[f32]) -> Vec<f32> {
        let t = hn.len() / self.gate.inp;
        let mut a = self.gate.apply(hn, t);
        silu_mul_in_place(&mut a, &self.up.apply(hn, t));
        a
    }

    /// Layer output: `h + down(act)`.
    pub fn mlp_residual(&self, h: &[f32], act: &[f32]) -> Vec<f32> {
        let t = act.len() / self.down.inp;
        let mut y = self.down.apply(act, t);
        add_in_place(&mut y, h);
        y
    }

    /// The whole layer on one window.
    pub fn forward(&self, g: &LayerGeometry, x: &[f32]) -> Vec<f32> {
        let attn = self.attention(g, &self.attn_norm(g, x));
        let h = self.attn_residual(x, &attn);
        let act = self.mlp_act(&self.mlp_norm(g, &h));
        self.mlp_residual(&h, &act)
    }
}

/// RMSNorm per row, the runtime's own arithmetic.
pub use lmq_runtime::model::host_ops::rms_norm_rows as rms_norm;

/// `[t, heads·hd]` → `[heads, t, hd]`, rotating each head vector by its position when tables
/// are given (HF "rotate half": pairs `i` and `i + hd/2`).
fn heads_major(
    x: &[f32],
    t: usize,
    heads: usize,
    hd: usize,
    rope: Option<(&[f32], &[f32])>,
) -> Vec<f32> {
    let half = hd / 2;
    let mut out = vec![0.0f32; x.len()];
    for p in 0..t {
        for h in 0..heads {
            let src = &x[(p * heads + h) * hd..][..hd];
            let dst = &mut out[(h * t + p) * hd..][..hd];
            match rope {
                None => dst.copy_from_slice(src),
                Some((cos, sin)) => {
                    let (c, s) = (&cos[p * hd..][..hd], &sin[p * hd..][..hd]);
                    for i in 0..half {
                        dst[i] = src[i] * c[i] - src[i + half] * s[i];
                        dst[i + half] = src[i + half] * c[i + half] + src[i] * s[i + half];
                    }
                }
            }
        }
    }
    out
}
