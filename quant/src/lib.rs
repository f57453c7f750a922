//! Offline model transformation: recipes, conversion and (next) quantization passes, and the
//! writer that produces HF-layout checkpoint directories.

pub mod convert;
pub mod recipe;
pub mod safetensors_writer;
pub mod staging;
