//! Calibration-free quantization of a whole checkpoint (RTN passes): each targeted linear is
//! rounded to its scheme's grid and written in compressed-tensors `pack-quantized` form (the
//! layout defined once in `lmq_runtime::packed`), everything else as floats, streaming one
//! tensor at a time. GPTQ needs calibrated Hessians and goes through the layer pipeline.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::packed::PackedLinear;
use serde_json::json;

use crate::convert::{write_tokenizer_files, ConvertOptions};
use crate::recipe::{FloatDtype, Pass, Recipe};
use crate::rtn;
use crate::safetensors_writer::{encode_f32, write_streaming, StDtype, TensorSpec};
use crate::scheme::{QuantScheme, WeightMatrix};
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

/// The compressed-tensors `quantization_config` for the passes' schemes.
fn quantization_config(
    groups: &[(QuantScheme, Vec<String>)],
    ignore: &[String],
) -> serde_json::Value {
    let mut config_groups = serde_json::Map::new();
    for (i, (s, modules)) in groups.iter().enumerate() {
        config_groups.insert(
            format!("group_{i}"),
            json!({
                "targets": modules,
                "weights": {
                    "num_bits": s.bits, "type": "int", "symmetric": s.symmetric,
                    "strategy": if s.group_size.is_some() { "group" } else { "channel" },
                    "group_size": s.group_size, "dynamic": false, "actorder": null, "observer": "minmax",
                },
                "input_activations": null,
                "output_activations": null,
                "format": "pack-quantized",
            }),
        );
    }
    json!({
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": null,
    })
}

/// Applies the recipe's RTN passes to `ckpt` and writes the packed checkpoint to `out`.
pub fn quantize_rtn(
    ckpt: &Checkpoint,
    recipe: &Recipe,
    out: &Path,
    opts: &ConvertOptions,
    mut progress: impl FnMut(&str),
) -> Result<QuantSummary> {
    let names = ckpt.weights.names();
    let targets = recipe.resolve_targets(&names)?;
    let mut scheme_of: HashMap<String, QuantScheme> = HashMap::new();
    let mut groups = Vec::new();
    for t in &targets {
        let (_, pass_idx) = (t.stage, t.pass);
        let pass = &recipe.stages[t.stage].passes[pass_idx];
        let scheme = match pass {
            Pass::Rtn(args) => args.scheme().map_err(|e| anyhow::anyhow!("{}: {}: {e}", recipe.path.display(), t.key))?,
            other => bail!(
                "{}: {}: `{}` needs calibration and the layer-by-layer pipeline, which is not built yet; only `rtn` passes run",
                recipe.path.display(),
                t.key,
                other.kind()
            ),
        };
        let mut modules = Vec::new();
        for name in &t.tensors {
            let shape = ckpt.weights.shape(name).context("target without shape")?;
            scheme.validate_for(name, shape[1])?;
            scheme_of.insert(name.clone(), scheme);
            modules.push(name.trim_end_matches(".weight").to_owned());
        }
        groups.push((scheme, modules));
    }
    let mut ignore: Vec<String> = names
        .iter()
        .filter(|n| crate::recipe::linear_module(n).is_some() && !scheme_of.contains_key(*n))
        .map(|n| n.trim_end_matches(".weight").to_owned())
        .collect();
    if ckpt.config.tie_word_embeddings && !ignore.iter().any(|m| m == "lm_head") {
        ignore.push("lm_head".into());
    }

    let float = match opts.dtype {
        FloatDtype::F32 => StDtype::F32,
        FloatDtype::Bf16 => StDtype::BF16,
    };
    let mut specs = Vec::new();
    for name in names
        .iter()
        .filter(|n| !(ckpt.config.tie_word_embeddings && *n == "lm_head.weight"))
    {
        let shape = ckpt.weights.shape(name).context("tensor without shape")?;
        let Some(s) = scheme_of.get(name) else {
            specs.push(TensorSpec {
                name: name.clone(),
                dtype: float,
                shape,
            });
            continue;
        };
        let prefix = name.trim_end_matches(".weight");
        let (rows, cols) = (shape[0], shape[1]);
        let pf = 32 / s.bits as usize;
        let n_groups = cols / s.group_size.unwrap_or(cols);
        specs.push(TensorSpec {
            name: format!("{prefix}.weight_packed"),
            dtype: StDtype::I32,
            shape: vec![rows, cols.div_ceil(pf)],
        });
        specs.push(TensorSpec {
            name: format!("{prefix}.weight_scale"),
            dtype: StDtype::F32,
            shape: vec![rows, n_groups],
        });
        if !s.symmetric {
            specs.push(TensorSpec {
                name: format!("{prefix}.weight_zero_point"),
                dtype: StDtype::I32,
                shape: vec![rows.div_ceil(pf), n_groups],
            });
        }
        specs.push(TensorSpec {
            name: format!("{prefix}.weight_shape"),
            dtype: StDtype::I64,
            shape: vec![2],
        });
    }

    let staging = StagingDir::new(out, opts.force)?;
    let dir = staging.path();
    let mut config = ckpt.config.to_hf_json();
    config["torch_dtype"] = json!(if float == StDtype::F32 {
        "float32"
    } else {
        "bfloat16"
    });
    config["quantization_config"] = quantization_config(&groups, &ignore);
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
        if suffix == "weight" || !scheme_of.contains_key(&format!("{prefix}.weight")) {
            progress(&spec.name);
            return Ok(encode_f32(&ckpt.weights.load_f32(&spec.name)?, spec.dtype));
        }
        if current.as_ref().is_none_or(|(p, _)| p != prefix) {
            let name = format!("{prefix}.weight");
            progress(&name);
            let s = scheme_of[&name];
            let shape = ckpt.weights.shape(&name).context("target without shape")?;
            let data = ckpt.weights.load_f32(&name)?;
            let q = rtn::quantize(&WeightMatrix::new(&name, &data, shape[0], shape[1])?, &s)?;
            let packed = q.to_packed().with_context(|| format!("packing {name}"))?;
            current = Some((prefix.to_owned(), packed));
        }
        let (_, p) = current.as_ref().expect("set above");
        Ok(match suffix {
            "weight_packed" => le_i32(&p.packed),
            "weight_scale" => encode_f32(&p.scale, StDtype::F32),
            "weight_zero_point" => le_i32(&p.packed_zero_point()?.unwrap_or_default()),
            "weight_shape" => [p.rows as i64, p.cols as i64]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            other => bail!("unexpected tensor suffix {other}"),
        })
    })
    .context("writing model.safetensors")?;
    write_tokenizer_files(ckpt, dir, opts.recipe.as_deref())?;
    let bytes = std::fs::metadata(dir.join("model.safetensors"))?.len();
    let out = staging.commit()?;
    Ok(QuantSummary {
        out,
        quantized_tensors: scheme_of.len(),
        bytes,
    })
}
