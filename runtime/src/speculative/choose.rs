//! `--speculative` values to proposers, shared by `generate`, `serve-local` and `spec-bench`:
//! `off`, `lookup`, `draft:M` (model M as the draft), `early-exit:N` (the target's first N
//! layers as its own draft), `medusa[:DIR]` (Medusa heads, by default the `medusa/` that
//! `quantize` writes beside the model), and `A+B` (a [`Cascade`]: A's guess where it has one,
//! else B's), e.g. `lookup:2+medusa@1`, where `@K` holds a proposer to K tokens a step, and
//! `~P` has a draft or Medusa chain propose only guesses it gives probability P or more
//! (`lookup:2+medusa@1~0.3`). Medusa heads on their own guess one token a step, and only a
//! likely one ([`MEDUSA_MAX_GUESSES`], [`MEDUSA_GUESS_P_MIN`]): more cost more than they
//! save on a CPU.

use std::path::Path;

use super::cascade::{Capped, Cascade};
use super::draft::DraftModel;
use super::gate::Gates;
use super::lookup::PromptLookup;
use super::Proposer;
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::medusa::heads::MedusaError;
use crate::medusa::{MedusaChain, MedusaHeads};
use crate::model::{LinearBackend, Llama};

/// Why a `--speculative` value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProposerError {
    #[error("unknown --speculative `{0}`: use off, lookup[:MIN_NGRAM], draft:MODEL, early-exit:LAYERS, medusa[:DIR], any of these with @K (at most K tokens a step), draft/early-exit/medusa with ~P (only guesses of probability P or more, 0 ≤ P < 1), or proposers joined by `+` (the first with a guess wins)")]
    Unknown(String),
    /// The heads' own error names their file.
    #[error(transparent)]
    Medusa(#[from] MedusaError),
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

/// What a `--speculative` value leaves open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProposerOptions {
    /// A draft model stops guessing after a token it gave less than this probability
    /// (llama.cpp's `--draft-p-min`); 0 always proposes the full `k`.
    pub draft_p_min: f64,
    /// A draft or Medusa chain proposes only guesses it gives at least this probability: a
    /// guess costs a verification row whether it is right or not, so one the proposer
    /// doubts costs more than it is expected to save. Set per proposer by the `X~P` suffix;
    /// `None`: 0 for a draft, [`MEDUSA_GUESS_P_MIN`] for Medusa heads.
    pub guess_p_min: Option<f64>,
    /// Whether the spec put an `@K` cap on this proposer; Medusa heads without one guess
    /// [`MEDUSA_MAX_GUESSES`] tokens a step.
    pub capped: bool,
}

impl Default for ProposerOptions {
    fn default() -> Self {
        Self {
            draft_p_min: DEFAULT_DRAFT_P_MIN,
            guess_p_min: None,
            capped: false,
        }
    }
}

/// Measured on the Qwen2.5-Coder 0.5B (w4) → 1.5B pair (README, "Speculative decoding"):
/// with k 6 it took the Spec-Bench speedup from 1.37× (k 4, no threshold) to 1.50×; 0.75
/// with k 8 gave 1.39×.
pub const DEFAULT_DRAFT_P_MIN: f64 = 0.6;

/// Guesses a Medusa chain makes per step unless `@K` says otherwise. Heads past the first
/// are right too rarely to pay for their verification rows on a CPU (README, "Session 26":
/// SmolLM2 f32 τ 1.27 / 0.95× with up to 4 guesses against 1.05× with one likely one).
pub const MEDUSA_MAX_GUESSES: usize = 1;

/// The probability under which a Medusa chain makes no guess unless `~P` says otherwise
/// (README, "Session 26": guesses its first head gives less than 0.45 were right 7% of the
/// time; on the 4-bit AWQ SmolLM2 the one-guess chain went from 0.88× to 0.94×).
pub const MEDUSA_GUESS_P_MIN: f64 = 0.45;

/// The proposer `spec` names for `target`, loaded from `target_dir` (`None` for `off`), with
/// the default options.
pub fn proposer_for<B: LinearBackend + 'static>(
    spec: &str,
    target: &Llama<B>,
    target_dir: &Path,
    device: &B::Device,
) -> Result<Option<Box<dyn Proposer + Send>>, ProposerError>
where
    Llama<B>: Send,
{
    proposer_with(
        spec,
        &ProposerOptions::default(),
        target,
        target_dir,
        device,
    )
}

/// [`proposer_for`] with explicit options.
pub fn proposer_with<B: LinearBackend + 'static>(
    spec: &str,
    opts: &ProposerOptions,
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
    if spec.contains('+') {
        let members = spec
            .split('+')
            .map(|m| {
                proposer_with(m, opts, target, target_dir, device)?
                    .ok_or_else(|| ProposerError::Unknown(spec.into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Some(Box::new(Cascade::new(members))));
    }
    // `X~P` with a probability P (a directory may hold a `~` of its own).
    if let Some((inner, Ok(p))) = spec.rsplit_once('~').map(|(i, p)| (i, p.parse::<f64>())) {
        let takes_probabilities = ["draft:", "early-exit:", "medusa"]
            .iter()
            .any(|k| inner.starts_with(k));
        if !((0.0..1.0).contains(&p) && takes_probabilities) {
            return Err(ProposerError::Unknown(spec.into()));
        }
        let opts = ProposerOptions {
            guess_p_min: Some(p),
            ..*opts
        };
        return proposer_with(inner, &opts, target, target_dir, device);
    }
    // `X@K` with a number K (a directory may hold an `@` of its own).
    if let Some((inner, Ok(max_k))) = spec.rsplit_once('@').map(|(i, k)| (i, k.parse::<usize>())) {
        if max_k == 0 {
            return Err(ProposerError::Unknown(spec.into()));
        }
        let opts = ProposerOptions {
            capped: true,
            ..*opts
        };
        let inner = proposer_with(inner, &opts, target, target_dir, device)?
            .ok_or_else(|| ProposerError::Unknown(spec.into()))?;
        return Ok(Some(Box::new(Capped { inner, max_k })));
    }
    if spec == "lookup" {
        return Ok(Some(Box::new(PromptLookup::default())));
    }
    if let Some(n) = spec.strip_prefix("lookup:") {
        // Matches of at least `n` tokens only: a shorter repeat is weak evidence, and in a
        // cascade the next proposer guesses better there.
        let min_ngram = n
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| ProposerError::Unknown(spec.into()))?;
        let d = PromptLookup::default();
        return Ok(Some(Box::new(PromptLookup {
            min_ngram,
            max_ngram: d.max_ngram.max(min_ngram),
        })));
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
        return Ok(Some(Box::new(DraftModel::new(draft, 0).with_gates(
            Gates {
                p_min: opts.draft_p_min,
                guess_p_min: opts.guess_p_min.unwrap_or(0.0),
            },
        ))));
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
        return Ok(Some(Box::new(DraftModel::new(d, 0).with_gates(Gates {
            p_min: opts.draft_p_min,
            guess_p_min: opts.guess_p_min.unwrap_or(0.0),
        }))));
    }
    if spec == "medusa" || spec.starts_with("medusa:") {
        let dir = match spec.strip_prefix("medusa:") {
            Some(d) => Path::new(d).to_path_buf(),
            None => target_dir.join("medusa"),
        };
        let heads = MedusaHeads::load_for(&dir, target.config.hidden_size)?;
        let chain = MedusaChain::new(target.clone(), heads).with_gates(Gates {
            p_min: opts.draft_p_min,
            guess_p_min: opts.guess_p_min.unwrap_or(MEDUSA_GUESS_P_MIN),
        });
        return Ok(Some(if opts.capped {
            Box::new(chain)
        } else {
            Box::new(Capped {
                inner: Box::new(chain),
                max_k: MEDUSA_MAX_GUESSES,
            })
        }));
    }
    Err(ProposerError::Unknown(spec.into()))
}
