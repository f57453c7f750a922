//! The Llama-family decoder (Llama, Qwen2) on burn.

mod attention;
mod kv_cache;
mod linear;
mod llama;
pub mod norm;
mod rope;

pub use kv_cache::KvCache;
pub use linear::{DenseWeight, HostWeight, Linear, LinearBackend};
pub use llama::{Llama, LoadError};
pub use rope::{rope_tables, Rope};
