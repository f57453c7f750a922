//! Offline model transformation: recipes, conversion and (next) quantization passes, and the
//! writer that produces HF-layout checkpoint directories.

pub mod convert;
pub mod gptq;
pub mod linalg;
pub mod recipe;
pub mod rtn;
pub mod rtn_checkpoint;
pub mod safetensors_writer;
pub mod scheme;
pub mod staging;
