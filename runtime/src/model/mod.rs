//! The Llama-family decoder (Llama, Qwen2) on burn.

mod attention;
pub mod host_ops;
mod host_step;
mod kv_cache;
mod linear;
mod llama;
pub mod norm;
mod rope;

pub use host_step::RowLayout;
pub use kv_cache::KvCache;
pub use linear::{host_matmul, DenseWeight, HostWeight, Linear, LinearBackend};
pub use llama::{Llama, LoadError};
pub use rope::{rope_tables, Rope};
