//! `--speculative` values to proposers, shared by `generate`, `serve-local` and `spec-bench`:
//! `off`, `lookup`, `draft:M` (model M as the draft), `early-exit:N` (the target's first N
//! layers as its own draft), `medusa[:DIR]` (Medusa heads, by default the `medusa/` that
//! `quantize` writes beside the model).

use std::path::Path;

use super::draft::DraftModel;
use super::lookup::PromptLookup;
use super::Proposer;
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::medusa::heads::MedusaError;
use crate::medusa::{MedusaChain, MedusaHeads};
use crate::model::{LinearBackend, Llama};

/// Why a `--speculative` value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProposerError {
    #[error("unknown --speculative `{0}`: use off, lookup, draft:MODEL, early-exit:LAYERS or medusa[:DIR]")]
    Unknown(String),
    #[error("Medusa heads: {0}")]
    Medusa(#[from] MedusaError),
    #[error("Medusa heads in {dir} are for hidden size {heads}, the model's is {model}")]
    MedusaShape {
        dir: String,
        heads: usize,
        model: usize,
    },
    #[error("early-exit:{0}: give a layer count between 1 and {1}")]
    Layers(String, usize),
    #[error("draft {draft} has a vocabulary of {draft_vocab} but the target has {target_vocab}")]
    Vocab {
        draft: String,
        draft_vocab: usize,
        target_vocab: usize,
    },
    #[error(transparent)]
    Checkpoint(#[from] Box<CheckpointError>),
}

/// The proposer `spec` names for `target`, loaded from `target_dir` (`None` for `off`).
pub fn proposer_for<B: LinearBackend + 'static>(
    spec: &str,
    target: &Llama<B>,
    target_dir: &Path,
    device: &B::Device,
) -> Result<Option<Box<dyn Proposer + Send>>, ProposerError>
where
    Llama<B>: Send,
{
    if spec == "off" {
        return Ok(None);
    }
    if spec == "lookup" {
        return Ok(Some(Box::new(PromptLookup::default())));
    }
    if let Some(m) = spec.strip_prefix("draft:") {
        let ckpt = Checkpoint::open(m).map_err(Box::new)?;
        if ckpt.config.vocab_size != target.config.vocab_size {
            return Err(ProposerError::Vocab {
                draft: m.into(),
                draft_vocab: ckpt.config.vocab_size,
                target_vocab: target.config.vocab_size,
            });
        }
        let draft = ckpt.load_model::<B>(device).map_err(Box::new)?;
        return Ok(Some(Box::new(DraftModel::new(draft, 0))));
    }
    if let Some(n) = spec.strip_prefix("early-exit:") {
        let total = target.layers.len();
        let layers = n
            .parse::<usize>()
            .ok()
            .filter(|&l| l >= 1 && l <= total)
            .ok_or_else(|| ProposerError::Layers(n.into(), total))?;
        let mut d = target.clone();
        d.layers.truncate(layers);
        return Ok(Some(Box::new(DraftModel::new(d, 0))));
    }
    if spec == "medusa" || spec.starts_with("medusa:") {
        let dir = match spec.strip_prefix("medusa:") {
            Some(d) => Path::new(d).to_path_buf(),
            None => target_dir.join("medusa"),
        };
        let heads = MedusaHeads::load(&dir)?;
        if heads.config.hidden_size != target.config.hidden_size {
            return Err(ProposerError::MedusaShape {
                dir: dir.display().to_string(),
                heads: heads.config.hidden_size,
                model: target.config.hidden_size,
            });
        }
        return Ok(Some(Box::new(MedusaChain::new(target.clone(), heads))));
    }
    Err(ProposerError::Unknown(spec.into()))
}
