//! The OneBit student: the Llama decoder with every decoder linear replaced by a trainable
//! 1-bit linear, written as a burn [`Module`] so that burn's autodiff trains it (CPU by
//! default; any autodiff backend, CUDA included, runs the same code). Embeddings and the
//! lm_head stay full precision and frozen (held outside the module); the RMSNorm weights stay
//! full precision and train.
//!
//! A 1-bit linear keeps a latent f32 matrix whose signs are the weights. The forward pass
//! uses the signs exactly; the backward pass treats `sign` as the identity (straight-through
//! estimator). The reference implementation scales that gradient by `1.001 − tanh²(w)`,
//! which is within 0.01% of 1 for its latent magnitudes (0.01, as here), so the plain
//! estimator is used.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use lmq_runtime::config::{ModelConfig, DECODER_LINEARS};
use lmq_runtime::generate::host_f32;
use lmq_runtime::model::norm::{layer_norm_no_affine, rms_norm};
use lmq_runtime::model::Rope;
use lmq_runtime::packed::onebit::{pack_signs, LAYER_NORM_EPS};
use lmq_runtime::packed::OneBitLinear;

use super::svid::Rank1;

/// Magnitude of the latent weights at initialization (the reference's `sign(W) · 0.01`):
/// small, so that a few optimizer steps can flip a sign.
pub const LATENT_INIT: f32 = 0.01;

/// One trainable 1-bit linear: `y = norm((x ⊙ b) · sign(latent)ᵀ ⊙ a) + bias`.
#[derive(Module, Debug)]
pub struct BitLinear<B: Backend> {
    /// `[out, in]`; only the signs are used in the forward pass.
    pub latent: Param<Tensor<B, 2>>,
    /// `a`: `[out]`.
    pub out_scale: Param<Tensor<B, 1>>,
    /// `b`: `[in]`.
    pub in_scale: Param<Tensor<B, 1>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub output_norm: bool,
}

impl<B: Backend> BitLinear<B> {
    /// SVID initialization from a full-precision `[out, in]` weight and its rank-1 factor.
    pub fn from_svid(
        w: &[f32],
        rows: usize,
        cols: usize,
        r: &Rank1,
        bias: Option<Vec<f32>>,
        output_norm: bool,
        device: &B::Device,
    ) -> Self {
        let latent: Vec<f32> = w
            .iter()
            .map(|&x| if x < 0.0 { -LATENT_INIT } else { LATENT_INIT })
            .collect();
        let t1 = |v: Vec<f32>| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(v.clone(), [v.len()]),
                device,
            ))
        };
        Self {
            latent: Param::from_tensor(Tensor::from_data(
                TensorData::new(latent, [rows, cols]),
                device,
            )),
            out_scale: t1(r.a.clone()),
            in_scale: t1(r.b.clone()),
            bias: bias.map(t1),
            output_norm,
        }
    }

    /// `x` `[n, in]` → `[n, out]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let w = self.latent.val();
        // ±1 exactly in the forward pass (`s + (w − w) = s`), identity gradient to `w`.
        let signs = w
            .clone()
            .greater_equal_elem(0.0)
            .float()
            .mul_scalar(2.0)
            .sub_scalar(1.0)
            .detach();
        let s = signs + (w.clone() - w.detach());
        let y = (x * self.in_scale.val().unsqueeze::<2>()).matmul(s.transpose())
            * self.out_scale.val().unsqueeze::<2>();
        let y = if self.output_norm {
            layer_norm_no_affine(y, LAYER_NORM_EPS)
        } else {
            y
        };
        match &self.bias {
            Some(b) => y + b.val().unsqueeze::<2>(),
            None => y,
        }
    }

    /// The packed form the runtime executes (signs of the latent, value vectors as trained).
    pub fn export(&self) -> (OneBitLinear, Option<Vec<f32>>) {
        let [rows, cols] = self.latent.dims();
        let latent = host_f32(self.latent.val());
        let w = OneBitLinear::new(
            rows,
            cols,
            pack_signs(&latent, rows, cols),
            host_f32(self.out_scale.val()),
            host_f32(self.in_scale.val()),
            self.output_norm,
        )
        .expect("shapes of a module built by from_svid");
        (w, self.bias.as_ref().map(|b| host_f32(b.val())))
    }
}

/// One decoder block of the student.
#[derive(Module, Debug)]
pub struct StudentLayer<B: Backend> {
    pub input_layernorm: Param<Tensor<B, 1>>,
    pub q_proj: BitLinear<B>,
    pub k_proj: BitLinear<B>,
    pub v_proj: BitLinear<B>,
    pub o_proj: BitLinear<B>,
    pub post_attention_layernorm: Param<Tensor<B, 1>>,
    pub gate_proj: BitLinear<B>,
    pub up_proj: BitLinear<B>,
    pub down_proj: BitLinear<B>,
}

/// The trainable part of the student.
#[derive(Module, Debug)]
pub struct Student<B: Backend> {
    pub layers: Vec<StudentLayer<B>>,
    pub norm: Param<Tensor<B, 1>>,
}

/// What the student uses and never trains: the full-precision embeddings and lm_head, the
/// rotary tables and the shape.
#[derive(Debug, Clone)]
pub struct Frozen<B: Backend> {
    pub config: ModelConfig,
    /// `[vocab, hidden]`.
    pub embed: Tensor<B, 2>,
    /// `[vocab, hidden]` (the embeddings again when tied).
    pub lm_head: Tensor<B, 2>,
    pub rope: Rope<B>,
}

impl<B: Backend> StudentLayer<B> {
    /// The block's linears in [`DECODER_LINEARS`] order.
    pub fn linears(&self) -> [&BitLinear<B>; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }

    fn forward(&self, x: Tensor<B, 3>, f: &Frozen<B>) -> Tensor<B, 3> {
        let c = &f.config;
        let [b, t, d] = x.dims();
        let (h, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let flat = |x: Tensor<B, 3>| x.reshape([b * t, d]);
        let n = flat(rms_norm(
            x.clone(),
            &self.input_layernorm.val(),
            c.rms_norm_eps,
        ));
        let q = f
            .rope
            .apply_split(self.q_proj.forward(n.clone()).reshape([b, t, h * hd]), h, 0);
        let k = f.rope.apply_split(
            self.k_proj.forward(n.clone()).reshape([b, t, kv * hd]),
            kv,
            0,
        );
        let v = self
            .v_proj
            .forward(n)
            .reshape([b, t, kv, hd])
            .swap_dims(1, 2);
        let group = h / kv;
        let repeat = |x: Tensor<B, 4>| {
            x.unsqueeze_dim::<5>(2)
                .repeat_dim(2, group)
                .reshape([b, h, t, hd])
        };
        let (k, v) = (repeat(k), repeat(v));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (hd as f64).sqrt());
        let mask = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &x.device());
        let scores = scores.mask_fill(mask.unsqueeze::<4>(), -1e9);
        let attn = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b * t, h * hd]);
        let x = x + self.o_proj.forward(attn).reshape([b, t, d]);
        let n = flat(rms_norm(
            x.clone(),
            &self.post_attention_layernorm.val(),
            c.rms_norm_eps,
        ));
        let m = silu(self.gate_proj.forward(n.clone())) * self.up_proj.forward(n);
        x + self.down_proj.forward(m).reshape([b, t, d])
    }
}

/// The student as the runtime executes it: every 1-bit linear (HF prefix, packed weight,
/// bias) and every full-precision tensor it trained (the norms), by HF name.
pub struct ExportedStudent {
    pub linears: Vec<(String, OneBitLinear, Option<Vec<f32>>)>,
    pub norms: Vec<(String, Vec<f32>)>,
}

/// The student's outputs for a batch: logits `[b·t, vocab]` and every block's output
/// `[b, t, hidden]`.
pub struct StudentOutput<B: Backend> {
    pub logits: Tensor<B, 2>,
    pub layer_outputs: Vec<Tensor<B, 3>>,
}

impl<B: Backend> Student<B> {
    /// The trained weights in checkpoint form (for the writer and in-memory sources).
    pub fn export(&self) -> ExportedStudent {
        let mut linears = Vec::new();
        let mut norms = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            for (m, lin) in DECODER_LINEARS.iter().zip(layer.linears()) {
                let (w, bias) = lin.export();
                linears.push((format!("{p}.{m}"), w, bias));
            }
            norms.push((
                format!("{p}.input_layernorm.weight"),
                host_f32(layer.input_layernorm.val()),
            ));
            norms.push((
                format!("{p}.post_attention_layernorm.weight"),
                host_f32(layer.post_attention_layernorm.val()),
            ));
        }
        norms.push(("model.norm.weight".into(), host_f32(self.norm.val())));
        ExportedStudent { linears, norms }
    }

    /// Runs token windows `[b, t]` (all starting at position 0).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, f: &Frozen<B>) -> StudentOutput<B> {
        let [b, t] = tokens.dims();
        let d = f.config.hidden_size;
        let mut x = f
            .embed
            .clone()
            .select(0, tokens.reshape([b * t]))
            .reshape([b, t, d]);
        let mut layer_outputs = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            x = layer.forward(x, f);
            layer_outputs.push(x.clone());
        }
        let x = rms_norm(x, &self.norm.val(), f.config.rms_norm_eps).reshape([b * t, d]);
        StudentOutput {
            logits: x.matmul(f.lm_head.clone().transpose()),
            layer_outputs,
        }
    }
}
