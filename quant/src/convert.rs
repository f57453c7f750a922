//! Writes a checkpoint as an HF-layout directory (config, safetensors, tokenizer files,
//! generation config) that transformers and our runtime both load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lmq_runtime::checkpoint::Checkpoint;
use serde_json::json;

use crate::recipe::FloatDtype;
use crate::safetensors_writer::{encode_f32, write_streaming, StDtype, TensorSpec};
use crate::staging::StagingDir;

/// What to write.
pub struct ConvertOptions {
    pub dtype: FloatDtype,
    pub force: bool,
    /// The recipe text, recorded beside the weights.
    pub recipe: Option<String>,
}

/// How tensors a recipe leaves in floating point are stored.
pub fn float_storage(dtype: FloatDtype) -> StDtype {
    match dtype {
        FloatDtype::F32 => StDtype::F32,
        FloatDtype::Bf16 => StDtype::BF16,
    }
}

/// The checkpoint's `config.json`, with `torch_dtype` saying how its floats are stored.
pub fn hf_config(ckpt: &Checkpoint, dtype: FloatDtype) -> serde_json::Value {
    let mut config = ckpt.config.to_hf_json();
    config["torch_dtype"] = json!(match dtype {
        FloatDtype::F32 => "float32",
        FloatDtype::Bf16 => "bfloat16",
    });
    config
}

/// Converts `ckpt` into `out`, atomically. Returns the final directory.
pub fn convert(
    ckpt: &Checkpoint,
    out: &Path,
    opts: &ConvertOptions,
    mut progress: impl FnMut(&str),
) -> Result<PathBuf> {
    let staging = StagingDir::new(out, opts.force)?;
    let dir = staging.path();
    let st_dtype = float_storage(opts.dtype);
    write_json(&dir.join("config.json"), &hf_config(ckpt, opts.dtype))?;

    let names: Vec<String> = ckpt
        .weights
        .names()
        .into_iter()
        .filter(|n| !(ckpt.config.tie_word_embeddings && n == "lm_head.weight"))
        .collect();
    let specs: Vec<TensorSpec> = names
        .iter()
        .map(|n| TensorSpec {
            name: n.clone(),
            dtype: st_dtype,
            shape: ckpt.weights.shape(n).expect("listed tensor has a shape"),
        })
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    write_streaming(&dir.join("model.safetensors"), &specs, &meta, |s| {
        progress(&s.name);
        let values = ckpt.weights.load_f32(&s.name)?;
        Ok(encode_f32(&values, s.dtype))
    })
    .context("writing model.safetensors")?;

    write_tokenizer_files(ckpt, dir, opts.recipe.as_deref())?;
    Ok(staging.commit()?)
}

/// Everything beside the weights: tokenizer files, generation config and the recipe used.
pub fn write_tokenizer_files(ckpt: &Checkpoint, dir: &Path, recipe: Option<&str>) -> Result<()> {
    std::fs::write(dir.join("tokenizer.json"), ckpt.tokenizer.to_json())?;
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config(ckpt))?;
    let eos = match ckpt.config.eos_token_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": ckpt.config.bos_token_id, "eos_token_id": eos, "do_sample": false}),
    )?;
    if let Some(recipe) = recipe {
        std::fs::write(dir.join("lmq_recipe.yaml"), recipe)?;
    }
    Ok(())
}

fn tokenizer_config(ckpt: &Checkpoint) -> serde_json::Value {
    let tok = &ckpt.tokenizer;
    let piece = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": piece(ckpt.config.bos_token_id),
        "eos_token": piece(ckpt.config.eos_token_ids.first().copied()),
        "add_bos_token": tok.add_bos(),
        "add_eos_token": false,
        "model_max_length": ckpt.config.max_position_embeddings,
        "chat_template": ckpt.chat_template,
        "clean_up_tokenization_spaces": false,
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("{}: cannot write", path.display()))
}
