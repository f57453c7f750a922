//! Offline model transformation: recipes, conversion and (next) quantization passes, and the
//! writer that produces HF-layout checkpoint directories.

pub mod awq;
pub mod calibrated;
pub mod convert;
pub mod device;
pub mod gptq;
pub mod linalg;
pub mod medusa_bound;
pub mod medusa_train;
pub mod onebit;
pub mod packed_checkpoint;
pub mod pipeline;
pub mod plan;
pub mod recipe;
pub mod rtn;
pub mod safetensors_writer;
pub mod scheme;
pub mod smoothquant;
pub mod staging;
