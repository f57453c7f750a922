//! The burn runtime: loading real checkpoints (GGUF, safetensors), the Llama/Qwen2 forward
//! pass, KV cache, sampling and generation. Everything that executes a model lives here so
//! that quantization, evals and the server share one definition of "the model".

pub mod allocator;
pub mod assets;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod generate;
pub mod generate_batch;
pub mod gguf;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod kernels;
pub mod medusa;
pub mod model;
pub mod packed;
pub mod sampling;
pub mod serve;
pub mod speculative;
pub mod sysinfo;
pub mod tokenizer;
pub mod weights;

/// The default CPU backend (burn's flex: the fastest burn CPU backend here, see README).
pub type Cpu = burn::backend::Flex;

/// The burn version the runtime is built on, for crates that build tensors for it.
pub use burn;
