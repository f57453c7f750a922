//! Writes a quantized checkpoint: each quantized linear in compressed-tensors
//! `pack-quantized` form (the layout defined once in `lmq_runtime::packed`), everything else
//! as floats, streaming one tensor at a time into a staging directory that is renamed into
//! place only when complete. RTN quantizes lazily here; calibrated passes hand over their
//! packed weights.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::packed::PackedLinear;
use serde_json::json;

use crate::convert::{float_storage, hf_config, write_tokenizer_files, ConvertOptions};
use crate::plan::{LinearMethod, QuantPlan};
use crate::recipe::Recipe;
use crate::rtn;
use crate::safetensors_writer::{encode_f32, write_streaming, StDtype, TensorSpec};
use crate::scheme::WeightMatrix;
use crate::staging::StagingDir;

/// What was written, for the summary line.
#[derive(Debug, Clone)]
pub struct QuantSummary {
    pub out: PathBuf,
    pub quantized_tensors: usize,
    pub bytes: u64,
}

fn le_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The compressed-tensors `quantization_config` for the plan: `pack-quantized` groups for
/// weight-only schemes, `int-quantized` ones (with dynamic per-token int8
/// `input_activations`) for W8A8, and `mixed-precision` at the top when both occur.
fn quantization_config(plan: &QuantPlan) -> serde_json::Value {
    let mut config_groups = serde_json::Map::new();
    let mut formats = std::collections::BTreeSet::new();
    for (i, (m, modules)) in plan.groups.iter().enumerate() {
        let s = m.scheme();
        // One pass per group, so one activation mode.
        let w8a8 = modules
            .iter()
            .find_map(|n| plan.int8_activations.get(&format!("{n}.weight")).copied());
        let format = if w8a8.is_some() {
            "int-quantized"
        } else {
            "pack-quantized"
        };
        formats.insert(format);
        let input_activations = w8a8.map(|a| {
            json!({
                "num_bits": 8, "type": "int", "symmetric": a.symmetric(), "strategy": "token",
                "dynamic": true, "group_size": null, "observer": null, "actorder": null,
            })
        });
        config_groups.insert(
            format!("group_{i}"),
            json!({
                "targets": modules,
                "weights": {
                    "num_bits": s.bits, "type": "int", "symmetric": s.symmetric,
                    "strategy": if s.group_size.is_some() { "group" } else { "channel" },
                    "group_size": s.group_size, "dynamic": false, "actorder": m.actorder(),
                    "observer": "minmax",
                },
                "input_activations": input_activations,
                "output_activations": null,
                "format": format,
            }),
        );
    }
    let format = match formats.len() {
        1 => formats.into_iter().next().unwrap_or("pack-quantized"),
        _ => "mixed-precision",
    };
    json!({
        "quant_method": "compressed-tensors",
        "format": format,
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": plan.ignore,
        "kv_cache_scheme": null,
    })
}

/// Whether tensor `prefix.suffix` of a quantized linear is written from its quantized form:
/// the packed format's parts (`weight_packed`, `weight_scale`, ...), or for W8A8 the int8
/// `weight` and its scale. Everything else of the linear (its `bias`, as Qwen2's q/k/v
/// have) stays a float tensor.
fn is_quantized_part(suffix: &str, int8: bool) -> bool {
    match suffix {
        "bias" => false,
        "weight" => int8,
        _ => true,
    }
}

/// Applies a recipe made only of RTN passes to `ckpt` and writes the packed checkpoint.
pub fn quantize_rtn(
    ckpt: &Checkpoint,
    recipe: &Recipe,
    out: &Path,
    opts: &ConvertOptions,
    progress: impl FnMut(&str),
) -> Result<QuantSummary> {
    let plan = QuantPlan::from_recipe(recipe, &*ckpt.weights, ckpt.config.tie_word_embeddings)?;
    if let Some((name, m)) = plan.linears.iter().find(|(_, m)| m.needs_hessian()) {
        bail!(
            "{}: `{}` (on {name}) needs calibration data: run it through the calibrated pipeline",
            recipe.path.display(),
            m.kind()
        );
    }
    write_packed_checkpoint(
        ckpt,
        &plan,
        out,
        opts,
        &[],
        &mut Default::default(),
        |name, m| {
            let shape = ckpt.weights.shape(name).context("target without shape")?;
            let data = ckpt.weights.load_f32(name)?;
            let q = rtn::quantize(
                &WeightMatrix::new(name, &data, shape[0], shape[1])?,
                &m.scheme(),
            )?;
            q.to_packed().with_context(|| format!("packing {name}"))
        },
        progress,
    )
}

/// Writes `ckpt` with the plan's linears replaced by what `packed_of(tensor, method)`
/// returns (called once per quantized weight, in file order), the float tensors in `floats`
/// (taken out of it) replacing the checkpoint's, plus `extra` files (name, contents) such as
/// a quantization report, atomically into `out`. A plan that quantizes nothing (AWQ scaling
/// alone) writes a plain float checkpoint, without `quantization_config`.
#[allow(clippy::too_many_arguments)]
pub fn write_packed_checkpoint(
    ckpt: &Checkpoint,
    plan: &QuantPlan,
    out: &Path,
    opts: &ConvertOptions,
    extra: &[(&str, Vec<u8>)],
    floats: &mut HashMap<String, Vec<f32>>,
    mut packed_of: impl FnMut(&str, &LinearMethod) -> Result<PackedLinear>,
    mut progress: impl FnMut(&str),
) -> Result<QuantSummary> {
    let names = ckpt.weights.names();
    let float = float_storage(opts.dtype);
    let mut specs = Vec::new();
    for name in names
        .iter()
        .filter(|n| !(ckpt.config.tie_word_embeddings && *n == "lm_head.weight"))
    {
        let shape = ckpt.weights.shape(name).context("tensor without shape")?;
        let Some(m) = plan.method(name) else {
            specs.push(TensorSpec {
                name: name.clone(),
                dtype: float,
                shape,
            });
            continue;
        };
        let s = m.scheme();
        let prefix = name.trim_end_matches(".weight");
        let (rows, cols) = (shape[0], shape[1]);
        if plan.int8_activations.contains_key(name) {
            // int-quantized: unpacked int8 codes under the weight's own name.
            specs.push(TensorSpec {
                name: name.clone(),
                dtype: StDtype::I8,
                shape: vec![rows, cols],
            });
            specs.push(TensorSpec {
                name: format!("{prefix}.weight_scale"),
                dtype: StDtype::F32,
                shape: vec![rows, 1],
            });
            continue;
        }
        let pf = 32 / s.bits as usize;
        let n_groups = cols / s.group_size.unwrap_or(cols);
        let mut push = |suffix: &str, dtype, shape| {
            specs.push(TensorSpec {
                name: format!("{prefix}.{suffix}"),
                dtype,
                shape,
            })
        };
        push("weight_packed", StDtype::I32, vec![rows, cols.div_ceil(pf)]);
        push("weight_scale", StDtype::F32, vec![rows, n_groups]);
        if !s.symmetric {
            push(
                "weight_zero_point",
                StDtype::I32,
                vec![rows.div_ceil(pf), n_groups],
            );
        }
        if m.actorder() == Some("group") {
            push("weight_g_idx", StDtype::I32, vec![cols]);
        }
        push("weight_shape", StDtype::I64, vec![2]);
    }

    let staging = StagingDir::new(out, opts.force)?;
    let dir = staging.path();
    let mut config = hf_config(ckpt, opts.dtype);
    if !plan.linears.is_empty() {
        config["quantization_config"] = quantization_config(plan);
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;

    let mut current: Option<(String, PackedLinear)> = None;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    write_streaming(&dir.join("model.safetensors"), &specs, &meta, |spec| {
        let Some((prefix, suffix)) = spec.name.rsplit_once('.') else {
            bail!("bad tensor name {}", spec.name)
        };
        let weight_name = format!("{prefix}.weight");
        let method = plan.method(&weight_name);
        let int8 = plan.int8_activations.contains_key(&weight_name);
        let Some(method) = method.filter(|_| is_quantized_part(suffix, int8)) else {
            progress(&spec.name);
            let values = match floats.remove(&spec.name) {
                Some(v) => v,
                None => ckpt.weights.load_f32(&spec.name)?,
            };
            return Ok(encode_f32(&values, spec.dtype));
        };
        if current.as_ref().is_none_or(|(p, _)| p != prefix) {
            progress(&weight_name);
            let packed = packed_of(&weight_name, method)?;
            let shape = ckpt.weights.shape(&weight_name).context("target without shape")?;
            if [packed.rows, packed.cols] != shape[..] || packed.bits != method.scheme().bits {
                bail!(
                    "{weight_name}: packed weight is {}x{} at {} bits, the plan says {:?} at {} bits",
                    packed.rows,
                    packed.cols,
                    packed.bits,
                    shape,
                    method.scheme().bits
                );
            }
            current = Some((prefix.to_owned(), packed));
        }
        let (_, p) = current.as_ref().expect("set above");
        if int8 {
            return Ok(match suffix {
                "weight" => p
                    .unpack_codes()
                    .with_context(|| format!("unpacking {weight_name}"))?
                    .into_iter()
                    .map(|c| c as u8)
                    .collect(),
                "weight_scale" => encode_f32(&p.scale, StDtype::F32),
                other => bail!("unexpected tensor suffix {other} of an int8 weight"),
            });
        }
        Ok(match suffix {
            "weight_packed" => le_i32(&p.packed),
            "weight_scale" => encode_f32(&p.scale, StDtype::F32),
            "weight_zero_point" => le_i32(&p.packed_zero_point()?.unwrap_or_default()),
            "weight_g_idx" => match &p.g_idx {
                Some(g) => le_i32(g),
                None => bail!("{weight_name}: activation-ordered groups but no g_idx"),
            },
            "weight_shape" => [p.rows as i64, p.cols as i64]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            other => bail!("unexpected tensor suffix {other}"),
        })
    })
    .context("writing model.safetensors")?;
    if let Some(name) = floats.keys().next() {
        bail!("{name}: changed by a pass but not a tensor of the checkpoint");
    }
    finish_checkpoint(ckpt, staging, opts, extra, plan.linears.len())
}

/// The last steps of every checkpoint writer once `model.safetensors` and `config.json` are
/// in the staging directory: tokenizer files, the recipe, `extra` files, then the rename
/// into place.
pub fn finish_checkpoint(
    ckpt: &Checkpoint,
    staging: StagingDir,
    opts: &ConvertOptions,
    extra: &[(&str, Vec<u8>)],
    quantized_tensors: usize,
) -> Result<QuantSummary> {
    let dir = staging.path();
    write_tokenizer_files(ckpt, dir, opts.recipe.as_deref())?;
    for (name, contents) in extra {
        std::fs::write(dir.join(name), contents).with_context(|| format!("writing {name}"))?;
    }
    let bytes = std::fs::metadata(dir.join("model.safetensors"))?.len();
    let out = staging.commit()?;
    Ok(QuantSummary {
        out,
        quantized_tensors,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantized_linears_bias_stays_a_float_tensor() {
        for int8 in [false, true] {
            assert!(!is_quantized_part("bias", int8), "Qwen2's q/k/v biases");
            assert!(is_quantized_part("weight_scale", int8));
        }
        assert!(is_quantized_part("weight_packed", false));
        assert!(is_quantized_part("weight", true) && !is_quantized_part("weight", false));
    }
}
