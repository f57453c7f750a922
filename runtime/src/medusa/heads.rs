//! Medusa heads on the host: `ResBlock^L` per head (x + SiLU(W x + b), W zero-initialized so
//! an untrained head repeats the base model's next-token guess), then the model's lm_head.
//!
//! Token-aware heads ([`MedusaConfig::token_input`]) also read the embedding of the token the
//! model chose from the same hidden state: that token is already in the sequence when the
//! heads guess (the verification pass picked it), yet a Medusa-1 head guessing the token after
//! it never sees it. Each head adds `U e(token)` to the hidden state before its blocks (`U`
//! zero-initialized, so an untrained token-aware head is a Medusa-1 head). This is Hydra's
//! idea (Ankner et al. 2024) cut down to the one token that is certain, so all heads still
//! run in parallel from one state and a candidate tree is built as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::kernels::simd::dot_f32;

/// File names inside a Medusa directory.
pub const CONFIG_FILE: &str = "medusa_config.json";
pub const WEIGHTS_FILE: &str = "medusa_heads.safetensors";

/// Shape of a set of heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MedusaConfig {
    pub num_heads: usize,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// Whether each head reads the embedding of the token chosen from its hidden state (absent
    /// in files written before token-aware heads: false).
    #[serde(default)]
    pub token_input: bool,
    /// A recurrent head (one token-aware head, applied again to its own state and the token
    /// it guessed) instead of one head per position ahead: see [`MedusaHeads::next_state`].
    /// Absent in files written before recurrent heads: false.
    #[serde(default)]
    pub recurrent: bool,
}

/// One residual block `x + SiLU(W x + b)`, `W` as `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResBlock {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// All heads: `blocks[head][layer]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MedusaHeads {
    pub config: MedusaConfig,
    pub blocks: Vec<Vec<ResBlock>>,
    /// Token-aware heads' `U` `[h, h]` (out × in) per head; empty unless
    /// [`MedusaConfig::token_input`].
    pub token_mix: Vec<Vec<f32>>,
    /// The tokens the heads may guess (their shortlist, most frequent first), or `None` for
    /// the whole vocabulary. Scoring a head state against every row of a 49152-token lm_head
    /// costs as much as the model's own head in every step; the answers heads learn from use
    /// a few thousand tokens, and a guess outside them is rare enough not to matter (the
    /// target still verifies against its full vocabulary, so output is unchanged).
    pub vocab: Option<Vec<u32>>,
}

/// Why heads could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MedusaError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("Medusa heads in {dir} are for hidden size {heads}, the model's is {model}")]
    Shape {
        dir: PathBuf,
        heads: usize,
        model: usize,
    },
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl MedusaHeads {
    /// Zero-initialized heads (each one's output equals its input).
    pub fn zeros(config: MedusaConfig) -> Self {
        let h = config.hidden_size;
        let block = ResBlock {
            weight: vec![0.0; h * h],
            bias: vec![0.0; h],
        };
        let token_mix = if config.token_input {
            vec![vec![0.0; h * h]; config.num_heads]
        } else {
            vec![]
        };
        Self {
            config,
            blocks: vec![vec![block; config.num_layers]; config.num_heads],
            token_mix,
            vocab: None,
        }
    }

    /// Head `head`'s hidden state for the model's final hidden state `x` (before the
    /// lm_head); `token` is the embedding of the token chosen from `x`, which token-aware
    /// heads read and others ignore.
    pub fn hidden(&self, head: usize, x: &[f32], token: &[f32]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let mut y = x.to_vec();
        if let Some(u) = self.token_mix.get(head) {
            assert_eq!(
                token.len(),
                h,
                "token-aware heads need the token's embedding"
            );
            y.iter_mut()
                .enumerate()
                .for_each(|(o, v)| *v += dot_f32(&u[o * h..][..h], token));
        }
        for b in &self.blocks[head] {
            let z: Vec<f32> = (0..h)
                .map(|o| silu(dot_f32(&b.weight[o * h..][..h], &y) + b.bias[o]))
                .collect();
            y.iter_mut().zip(z).for_each(|(a, z)| *a += z);
        }
        y
    }

    /// A recurrent head's state one position further on: the head reads its state `x` (at
    /// first the target's final hidden state) and the embedding of the token chosen from it,
    /// and returns the state its next guess is scored from, which it reads again with that
    /// guess. Trained to match the target's own next final hidden state (EAGLE's
    /// feature-level drafting, with a ResBlock where EAGLE has a decoder layer), so guesses
    /// further ahead know the guesses before them, which independent Medusa heads never do.
    pub fn next_state(&self, x: &[f32], token: &[f32]) -> Vec<f32> {
        debug_assert!(self.config.recurrent, "next_state of non-recurrent heads");
        self.hidden(0, x, token)
    }

    /// The tensor holding [`MedusaHeads::vocab`] (U32, absent for the whole vocabulary).
    const VOCAB_TENSOR: &'static str = "medusa.vocab";

    fn name(head: usize, layer: usize, what: &str) -> String {
        format!("medusa.{head}.{layer}.{what}")
    }

    /// Head `head`'s token matrix `U`.
    fn token_name(head: usize) -> String {
        format!("medusa.{head}.token.weight")
    }

    /// Writes `medusa_config.json` and `medusa_heads.safetensors` into `dir` (created),
    /// each under a temporary name first.
    pub fn save(&self, dir: &Path) -> Result<(), MedusaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |cause| MedusaError::Io { path, cause }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let h = self.config.hidden_size;
        let mut bytes: Vec<(String, Vec<u8>, Vec<usize>)> = vec![];
        for (k, head) in self.blocks.iter().enumerate() {
            for (l, b) in head.iter().enumerate() {
                bytes.push((
                    Self::name(k, l, "weight"),
                    bytemuck::cast_slice(&b.weight).to_vec(),
                    vec![h, h],
                ));
                bytes.push((
                    Self::name(k, l, "bias"),
                    bytemuck::cast_slice(&b.bias).to_vec(),
                    vec![h],
                ));
            }
        }
        for (k, u) in self.token_mix.iter().enumerate() {
            bytes.push((
                Self::token_name(k),
                bytemuck::cast_slice(u).to_vec(),
                vec![h, h],
            ));
        }
        let mut views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(n, b, s)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).expect("tensor view"),
                )
            })
            .collect();
        let vocab_bytes: Option<&[u8]> = self.vocab.as_deref().map(bytemuck::cast_slice);
        if let (Some(v), Some(b)) = (&self.vocab, vocab_bytes) {
            views.push((
                Self::VOCAB_TENSOR.to_owned(),
                TensorView::new(Dtype::U32, vec![v.len()], b).expect("tensor view"),
            ));
        }
        let weights = dir.join(WEIGHTS_FILE);
        let tmp = dir.join(format!(".{WEIGHTS_FILE}.tmp"));
        safetensors::serialize_to_file(views, None, &tmp).map_err(|e| MedusaError::Format {
            path: tmp.clone(),
            msg: e.to_string(),
        })?;
        std::fs::rename(&tmp, &weights).map_err(io(&weights))?;
        let config = dir.join(CONFIG_FILE);
        let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_string_pretty(&self.config).expect("config json"),
        )
        .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &config).map_err(io(&config))
    }

    /// Reads heads written by [`MedusaHeads::save`] for a model of `hidden_size`: heads
    /// trained on another model fail here, naming their directory, not deep in a product.
    pub fn load_for(dir: &Path, hidden_size: usize) -> Result<Self, MedusaError> {
        let heads = Self::load(dir)?;
        if heads.config.hidden_size != hidden_size {
            return Err(MedusaError::Shape {
                dir: dir.to_path_buf(),
                heads: heads.config.hidden_size,
                model: hidden_size,
            });
        }
        Ok(heads)
    }

    /// Reads heads written by [`MedusaHeads::save`].
    pub fn load(dir: &Path) -> Result<Self, MedusaError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|source| MedusaError::Io {
            path: config_path.clone(),
            cause: source,
        })?;
        let config: MedusaConfig =
            serde_json::from_str(&text).map_err(|e| MedusaError::Format {
                path: config_path,
                msg: e.to_string(),
            })?;
        let path = dir.join(WEIGHTS_FILE);
        let data = std::fs::read(&path).map_err(|source| MedusaError::Io {
            path: path.clone(),
            cause: source,
        })?;
        let fmt = |msg: String| MedusaError::Format {
            path: path.clone(),
            msg,
        };
        let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| fmt(e.to_string()))?;
        let h = config.hidden_size;
        let mut tensors: HashMap<String, Vec<f32>> = HashMap::new();
        let mut vocab = None;
        for (name, view) in st.tensors() {
            if name == Self::VOCAB_TENSOR {
                if view.dtype() != Dtype::U32 || view.shape().len() != 1 {
                    return Err(fmt(format!(
                        "{name}: dtype {:?} shape {:?}, expected a U32 vector",
                        view.dtype(),
                        view.shape()
                    )));
                }
                let ids: Vec<u32> = bytemuck::pod_collect_to_vec(view.data());
                if ids.is_empty() {
                    return Err(fmt(format!("{name}: an empty shortlist")));
                }
                vocab = Some(ids);
                continue;
            }
            if view.dtype() != Dtype::F32 {
                return Err(fmt(format!(
                    "{name}: dtype {:?}, expected F32",
                    view.dtype()
                )));
            }
            tensors.insert(name, bytemuck::pod_collect_to_vec(view.data()));
        }
        let mut take = |name: String, len: usize| {
            let v = tensors
                .remove(&name)
                .ok_or_else(|| fmt(format!("missing tensor {name}")))?;
            if v.len() != len {
                return Err(fmt(format!("{name}: {} values, expected {len}", v.len())));
            }
            Ok(v)
        };
        let mut blocks = vec![];
        for k in 0..config.num_heads {
            let mut head = vec![];
            for l in 0..config.num_layers {
                head.push(ResBlock {
                    weight: take(Self::name(k, l, "weight"), h * h)?,
                    bias: take(Self::name(k, l, "bias"), h)?,
                });
            }
            blocks.push(head);
        }
        let token_mix = if config.token_input {
            (0..config.num_heads)
                .map(|k| take(Self::token_name(k), h * h))
                .collect::<Result<_, _>>()?
        } else {
            vec![]
        };
        if let Some(name) = tensors.keys().next() {
            return Err(fmt(format!(
                "unexpected tensor {name} (token_input: {})",
                config.token_input
            )));
        }
        if config.recurrent && (config.num_heads != 1 || !config.token_input) {
            return Err(MedusaError::Format {
                path: dir.join(CONFIG_FILE),
                msg: format!(
                    "a recurrent head is one token-aware head (num_heads {}, token_input {})",
                    config.num_heads, config.token_input
                ),
            });
        }
        Ok(Self {
            config,
            blocks,
            token_mix,
            vocab,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_heads_pass_through_and_files_round_trip() {
        let c = MedusaConfig {
            num_heads: 2,
            num_layers: 1,
            hidden_size: 3,
            token_input: false,
            recurrent: false,
        };
        let mut m = MedusaHeads::zeros(c);
        assert_eq!(m.hidden(1, &[1.0, -2.0, 3.0], &[]), vec![1.0, -2.0, 3.0]);
        m.blocks[1][0].weight[0] = 1.0; // row 0 reads x[0]
        m.blocks[1][0].bias[2] = 0.5;
        let y = m.hidden(1, &[1.0, -2.0, 3.0], &[]);
        assert!((y[0] - (1.0 + silu(1.0))).abs() < 1e-6 && (y[2] - (3.0 + silu(0.5))).abs() < 1e-6);
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        assert_eq!(MedusaHeads::load(dir.path()).unwrap(), m);
        m.vocab = Some(vec![7, 3, 11]);
        m.save(dir.path()).unwrap();
        assert_eq!(MedusaHeads::load(dir.path()).unwrap(), m);
        // For a model of another width they fail at loading, naming their directory.
        assert_eq!(MedusaHeads::load_for(dir.path(), 3).unwrap(), m);
        let e = MedusaHeads::load_for(dir.path(), 4)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("hidden size 3"),
            "{e}"
        );
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"junk").unwrap();
        let e = MedusaHeads::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(WEIGHTS_FILE), "{e}");
    }

    #[test]
    fn token_aware_heads_add_the_mixed_token_and_round_trip() {
        let c = MedusaConfig {
            num_heads: 2,
            num_layers: 1,
            hidden_size: 2,
            token_input: true,
            recurrent: false,
        };
        let mut m = MedusaHeads::zeros(c);
        let (x, e) = ([1.0, -2.0], [0.5, 4.0]);
        // Zero U: a Medusa-1 head.
        assert_eq!(m.hidden(0, &x, &e), x.to_vec());
        m.token_mix[1] = vec![1.0, 0.0, 0.0, -1.0]; // U = diag(1, -1)
        m.blocks[1][0].bias = vec![0.25, 0.0];
        let y = m.hidden(1, &x, &e);
        let x0 = [1.5, -6.0];
        let want = [x0[0] + silu(0.25), x0[1] + silu(0.0)];
        assert!(
            y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{y:?}"
        );
        assert_eq!(m.hidden(0, &x, &e), x.to_vec(), "head 0 keeps its own U");
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        assert_eq!(MedusaHeads::load(dir.path()).unwrap(), m);
        // A config that disowns the token matrices names the tensor it did not expect.
        let mut plain = c;
        plain.token_input = false;
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_string(&plain).unwrap(),
        )
        .unwrap();
        let e = MedusaHeads::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("unexpected tensor medusa.") && e.contains(".token.weight"),
            "{e}"
        );
        // One that claims them where the file has none names the missing one.
        let m2 = MedusaHeads::zeros(plain);
        m2.save(dir.path()).unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_string(&c).unwrap(),
        )
        .unwrap();
        let e = MedusaHeads::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("missing tensor medusa.0.token.weight"), "{e}");
    }

    #[test]
    fn a_recurrent_head_is_one_token_aware_head_and_round_trips() {
        let c = MedusaConfig {
            num_heads: 1,
            num_layers: 1,
            hidden_size: 2,
            token_input: true,
            recurrent: true,
        };
        let mut m = MedusaHeads::zeros(c);
        m.token_mix[0] = vec![1.0, 0.0, 0.0, 1.0]; // U = I: the state moves toward the token
        let s1 = m.next_state(&[1.0, -2.0], &[0.5, 4.0]);
        assert_eq!(s1, vec![1.5, 2.0]);
        assert_eq!(m.next_state(&s1, &[0.5, 4.0]), vec![2.0, 6.0]);
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        assert_eq!(MedusaHeads::load(dir.path()).unwrap(), m);
        // Two heads, or none reading tokens, are not a recurrent head: the config is named.
        for bad in [
            MedusaConfig { num_heads: 2, ..c },
            MedusaConfig {
                token_input: false,
                ..c
            },
        ] {
            MedusaHeads::zeros(bad).save(dir.path()).unwrap();
            let e = MedusaHeads::load(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains(CONFIG_FILE) && e.contains("a recurrent head is one token-aware head"),
                "{e}"
            );
        }
    }
}
