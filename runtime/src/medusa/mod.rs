//! Medusa-1 (Cai et al. 2024): K extra heads on the frozen model's last hidden state guess the
//! tokens 2…K+1 positions ahead; a candidate tree of their top-k guesses is verified in one
//! target pass with tree attention, and the longest path the target agrees with is kept.
//! Heads live beside the model (`medusa/`: `medusa_config.json` + `medusa_heads.safetensors`);
//! each reuses the model's own lm_head (tied, not stored twice). Token-aware heads (the
//! default of `medusa-train`) also read the embedding of the token the model chose from the
//! same hidden state; see [`heads`]. A recurrent head (`medusa-train --recurrent true`) is one
//! token-aware head applied again to its own state and guess, a chain proposer only.

pub mod chain;
pub mod decode;
pub mod device_decode;
pub mod heads;
pub mod projection;
pub mod tree;

pub use chain::MedusaChain;
pub use decode::{generate_medusa, generate_medusa_with, Acceptance};
pub use device_decode::generate_medusa_on_device;
pub use heads::{MedusaConfig, MedusaHeads};
pub use projection::HeadProjection;
pub use tree::{Tree, Typical};
