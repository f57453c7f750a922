//! Opening whatever the user points `--model` at: a GGUF file, an HF directory, or the name
//! of a cached asset. One function so every command accepts the same things.

use std::path::{Path, PathBuf};

use crate::assets::{self, Asset};
use crate::config::ModelConfig;
use crate::model::{LinearBackend, Llama};
use crate::tokenizer::{GgufTokenizerSpec, Tokenizer};
use crate::weights::{GgufSource, SafetensorsDir, WeightError, WeightSource};

/// A checkpoint whose weights are not loaded yet: config, tokenizer and a weight source.
pub struct Checkpoint {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub weights: Box<dyn WeightSource>,
    /// The chat template, from GGUF metadata or tokenizer_config.json.
    pub chat_template: Option<String>,
}

/// Why a checkpoint could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(transparent)]
    Asset(#[from] crate::assets::AssetError),
    #[error("{0}: no such file or directory (expected a .gguf file, an HF model directory, or one of: smollm2, qwen-0.5b, qwen-1.5b)")]
    NotFound(PathBuf),
}

/// Resolves the short names of cached assets (`smollm2`, `qwen-0.5b`, `qwen-1.5b`).
pub fn asset_alias(name: &str) -> Option<Asset> {
    match name {
        "smollm2" | "smollm2-135m" => Some(Asset::SmolLm2),
        "qwen-0.5b" | "qwen2.5-coder-0.5b" => Some(Asset::QwenCoder05),
        "qwen-1.5b" | "qwen2.5-coder-1.5b" => Some(Asset::QwenCoder15),
        _ => None,
    }
}

impl Checkpoint {
    /// Opens `spec`: a path to a `.gguf` file or an HF directory, or an asset alias (fetched
    /// into the cache if needed).
    pub fn open(spec: &str) -> Result<Self, CheckpointError> {
        let path = PathBuf::from(spec);
        if !path.exists() {
            if let Some(asset) = asset_alias(spec) {
                return Self::open_gguf(&assets::ensure(asset)?);
            }
            return Err(CheckpointError::NotFound(path));
        }
        if path.is_dir() {
            Self::open_dir(&path)
        } else {
            Self::open_gguf(&path)
        }
    }

    /// Opens a GGUF model file (weights dequantized to f32 on load).
    pub fn open_gguf(path: &Path) -> Result<Self, CheckpointError> {
        let src = GgufSource::open(path)?;
        let spec = GgufTokenizerSpec::from_gguf(src.gguf())?;
        let tokenizer = Tokenizer::from_spec(&spec)?;
        Ok(Self {
            path: path.to_owned(),
            config: src.config().clone(),
            chat_template: spec.chat_template.clone(),
            tokenizer,
            weights: Box::new(src),
        })
    }

    /// Opens an HF directory (`config.json`, safetensors, `tokenizer.json`).
    pub fn open_dir(dir: &Path) -> Result<Self, CheckpointError> {
        let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
        let weights = SafetensorsDir::open(dir)?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("chat_template")?.as_str().map(str::to_owned));
        Ok(Self {
            path: dir.to_owned(),
            config,
            tokenizer,
            weights: Box::new(weights),
            chat_template,
        })
    }

    /// Builds the burn model on `device`.
    pub fn load_model<B: LinearBackend>(
        &self,
        device: &B::Device,
    ) -> Result<Llama<B>, CheckpointError> {
        crate::allocator::tune_for_inference();
        let model = Llama::load(&self.config, self.weights.as_ref(), &self.path, device)?;
        // The model holds copies of everything it read: the file's pages need not stay.
        self.weights.release_pages();
        Ok(model)
    }
}
