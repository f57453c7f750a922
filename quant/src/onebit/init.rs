//! Building the student from a checkpoint: every decoder linear SVID-initialized (in
//! parallel over layers' linears), norms copied, embeddings and lm_head frozen.

use anyhow::Result;
use burn::module::Param;
use burn::prelude::*;
use std::path::Path;

use lmq_runtime::config::ModelConfig;
use lmq_runtime::model::Rope;
use lmq_runtime::weights::load_checked;
use lmq_runtime::weights::{MemorySource, WeightSource};
use rayon::prelude::*;
use serde::Serialize;

use super::student::{BitLinear, Frozen, Student, StudentLayer};
use super::svid::{rank1_abs, relative_error, Rank1};

/// How well SVID kept one weight, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct SvidReport {
    pub name: String,
    /// `‖W − sign(W) ⊙ a·bᵀ‖ / ‖W‖`.
    pub relative_error: f64,
    pub iterations: usize,
}

/// The SVID-initialized student and its frozen parts; `progress` is told each layer done.
pub fn svid_student<B: Backend>(
    c: &ModelConfig,
    src: &dyn WeightSource,
    origin: &Path,
    output_norm: bool,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<(Student<B>, Frozen<B>, Vec<SvidReport>)> {
    let load = |name: &str, shape: &[usize]| load_checked(src, origin, name, shape);
    let vec1 = |v: Vec<f32>| {
        Param::from_tensor(Tensor::from_data(
            TensorData::new(v.clone(), [v.len()]),
            device,
        ))
    };
    let mut layers = Vec::with_capacity(c.num_layers);
    let mut reports = Vec::new();
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let weights: Vec<(String, Vec<f32>, usize, usize)> = c
            .decoder_linears()
            .into_iter()
            .map(|(m, o, i)| {
                let name = format!("{p}.{m}.weight");
                Ok((name.clone(), load(&name, &[o, i])?, o, i))
            })
            .collect::<Result<_>>()?;
        let factors: Vec<Rank1> = weights
            .par_iter()
            .map(|(_, w, o, i)| rank1_abs(w, *o, *i))
            .collect();
        let mut lin = Vec::with_capacity(7);
        for (j, ((name, w, o, i), r)) in weights.iter().zip(&factors).enumerate() {
            let bias = if c.attention_bias && j < 3 {
                Some(load(&name.replace(".weight", ".bias"), &[*o])?)
            } else {
                None
            };
            reports.push(SvidReport {
                name: name.clone(),
                relative_error: relative_error(w, *o, *i, r),
                iterations: r.iterations,
            });
            lin.push(BitLinear::from_svid(
                w,
                *o,
                *i,
                r,
                bias,
                output_norm,
                device,
            ));
        }
        let mut it = lin.into_iter();
        let mut next = || it.next().expect("seven linears");
        layers.push(StudentLayer {
            input_layernorm: vec1(load(
                &format!("{p}.input_layernorm.weight"),
                &[c.hidden_size],
            )?),
            q_proj: next(),
            k_proj: next(),
            v_proj: next(),
            o_proj: next(),
            post_attention_layernorm: vec1(load(
                &format!("{p}.post_attention_layernorm.weight"),
                &[c.hidden_size],
            )?),
            gate_proj: next(),
            up_proj: next(),
            down_proj: next(),
        });
        progress(l + 1);
    }
    let student = Student {
        layers,
        norm: vec1(load("model.norm.weight", &[c.hidden_size])?),
    };
    let shape = [c.vocab_size, c.hidden_size];
    let t2 = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, shape), device);
    let embed = t2(load("model.embed_tokens.weight", &shape)?);
    let lm_head = if c.tie_word_embeddings {
        embed.clone()
    } else {
        t2(load("lm_head.weight", &shape)?)
    };
    let frozen = Frozen {
        config: c.clone(),
        embed,
        lm_head,
        rope: Rope::new(c.rope_theta, c.head_dim, c.max_position_embeddings, device),
    };
    Ok((student, frozen, reports))
}

/// `base` with the student's 1-bit linears and trained norms in place of the original
/// weights: the model as the runtime will execute it, without writing files (tests,
/// in-process evaluation).
pub fn exported_source<B: Backend>(student: &Student<B>, base: &MemorySource) -> MemorySource {
    let mut src = base.clone();
    let e = student.export();
    for (prefix, w, bias) in e.linears {
        src.tensors.remove(&format!("{prefix}.weight"));
        if let Some(b) = bias {
            src.insert(&format!("{prefix}.bias"), vec![b.len()], b);
        }
        src.onebit.insert(prefix, w);
    }
    for (name, v) in e.norms {
        src.insert(&name, vec![v.len()], v);
    }
    src
}
