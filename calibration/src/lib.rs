//! Calibration data for quantization passes (GPTQ, AWQ, SmoothQuant): where the text comes
//! from, how it becomes token windows, and the HF-datasets reader that both this crate and the
//! zero-shot evals use to read the eval data shipped as Arrow files.
//!
//! - [`arrow_dataset`]: rows of an HF `save_to_disk` dataset as JSON objects, so callers never
//!   see Arrow types.
//! - [`sources`]: the calibration [`Source`]s of a recipe and the GPTQ-style window sampler
//!   that turns one into a [`CalibrationSet`].
//! - [`pyrandom`]: Python's `random` (MT19937), reproduced exactly so that windows match the
//!   reference implementations sample for sample.

pub mod arrow_dataset;
pub mod error;
pub mod pyrandom;
pub mod sources;

pub use error::CalibrationError;
pub use sources::{build, CalibrationSet, Source};
