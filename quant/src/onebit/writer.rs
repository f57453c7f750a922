//! Writes a trained (or SVID-only) student as a checkpoint the runtime executes: the 1-bit
//! linears in the layout of `lmq_runtime::packed::onebit` (`weight_sign`,
//! `weight_out_scale`, `weight_in_scale`), the trained norms, and everything else copied from
//! the source checkpoint; `config.json` gets our own `quantization_config`
//! (`quant_method: onebit`). Written atomically (staging directory, then rename).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::Backend;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::packed::onebit::LAYER_NORM_EPS;
use serde_json::json;

use super::student::Student;
use crate::convert::{float_storage, hf_config, ConvertOptions};
use crate::packed_checkpoint::{finish_checkpoint, QuantSummary};
use crate::safetensors_writer::{encode_f32, write_streaming, StDtype, TensorSpec};
use crate::staging::StagingDir;

type Bytes = (StDtype, Vec<usize>, Vec<u8>);

/// Writes `student` (with `ckpt`'s other tensors) to `out`, plus `extra` files.
pub fn write_onebit_checkpoint<B: Backend>(
    ckpt: &Checkpoint,
    student: &Student<B>,
    out: &Path,
    opts: &ConvertOptions,
    extra: &[(&str, Vec<u8>)],
) -> Result<QuantSummary> {
    let float = float_storage(opts.dtype);
    let mut tensors: HashMap<String, Bytes> = HashMap::new();
    let exported = student.export();
    let output_norm = exported.linears.iter().any(|(_, w, _)| w.output_norm);
    let mut modules = Vec::new();
    for (prefix, w, bias) in exported.linears {
        let signs: Vec<u8> = w.signs.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.insert(
            format!("{prefix}.weight_sign"),
            (StDtype::I32, vec![w.rows, w.words_per_row()], signs),
        );
        for (suffix, v) in [
            ("weight_out_scale", &w.out_scale),
            ("weight_in_scale", &w.in_scale),
        ] {
            tensors.insert(
                format!("{prefix}.{suffix}"),
                (StDtype::F32, vec![v.len()], encode_f32(v, StDtype::F32)),
            );
        }
        if let Some(b) = bias {
            tensors.insert(
                format!("{prefix}.bias"),
                (float, vec![b.len()], encode_f32(&b, float)),
            );
        }
        modules.push(prefix);
    }
    for (name, v) in exported.norms {
        tensors.insert(name, (float, vec![v.len()], encode_f32(&v, float)));
    }

    // Everything else (embeddings, an untied lm_head) as the source has it.
    let replaced: Vec<String> = modules.iter().map(|m| format!("{m}.weight")).collect();
    let mut specs: Vec<TensorSpec> = Vec::new();
    for name in ckpt.weights.names() {
        if replaced.contains(&name) || tensors.contains_key(&name) {
            continue;
        }
        if ckpt.config.tie_word_embeddings && name == "lm_head.weight" {
            continue;
        }
        let shape = ckpt.weights.shape(&name).context("tensor without shape")?;
        specs.push(TensorSpec {
            name,
            dtype: float,
            shape,
        });
    }
    for (name, (dtype, shape, _)) in &tensors {
        specs.push(TensorSpec {
            name: name.clone(),
            dtype: *dtype,
            shape: shape.clone(),
        });
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));

    let staging = StagingDir::new(out, opts.force)?;
    let dir = staging.path();
    let mut config = hf_config(ckpt, opts.dtype);
    config["quantization_config"] = json!({
        "quant_method": "onebit",
        "format": "sign-packed",
        "sign_layout": "int32 [out, ceil(in/32)]; bit j of word w is column 32w+j; set = -1",
        "output_norm": output_norm,
        "layer_norm_eps": LAYER_NORM_EPS,
        "targets": modules,
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    write_streaming(
        &dir.join("model.safetensors"),
        &specs,
        &meta,
        |spec| match tensors.remove(&spec.name) {
            Some((_, _, bytes)) => Ok(bytes),
            None => Ok(encode_f32(&ckpt.weights.load_f32(&spec.name)?, spec.dtype)),
        },
    )
    .context("writing model.safetensors")?;
    finish_checkpoint(ckpt, staging, opts, extra, modules.len())
}
