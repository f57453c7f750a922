//! Quantization math on a burn device (`quantize --device cuda`): the Hessian sums and
//! GPTQ's column loop as tensor operations, generic over the backend so that the very code a
//! GPU runs is tested here against the host reference on the CPU backend. The host
//! functions (`crate::gptq`, `crate::pipeline::hessian`) stay the reference and the CPU path;
//! this module only moves their matrix products.

pub mod gptq;
pub mod gram;

use std::fmt::Debug;

use crate::gptq::{GptqOptions, GptqResult};
use crate::scheme::{QuantError, WeightMatrix};

/// Where the calibrated pipeline's matrix work runs when it is not the host: the two
/// operations that dominate it, and nothing else.
pub trait QuantDevice: Send + Sync + Debug {
    /// The device, as the summary names it.
    fn describe(&self) -> String;
    /// An empty Σ x·xᵀ accumulator for inputs of width `n`, held on the device.
    fn gram(&self, n: usize) -> Box<dyn DeviceGram>;
    /// GPTQ for one linear; the contract of [`crate::gptq::quantize`].
    fn gptq(
        &self,
        weight: &WeightMatrix,
        hessian: &[f64],
        opts: &GptqOptions,
    ) -> Result<GptqResult, QuantError>;
}

/// A running Σ x·xᵀ on a device.
pub trait DeviceGram: Send {
    /// Adds the rows of `x` (`[t, n]`, one row per token).
    fn add(&mut self, x: &[f32]);
    /// The sum so far, `[n, n]` row-major, f64.
    fn sum(&self) -> Vec<f64>;
}

/// [`QuantDevice`] for any burn backend.
#[derive(Debug, Clone)]
pub struct BurnDevice<B: burn::prelude::Backend> {
    pub device: B::Device,
    pub name: String,
}

impl<B: burn::prelude::Backend> QuantDevice for BurnDevice<B> {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn gram(&self, n: usize) -> Box<dyn DeviceGram> {
        Box::new(gram::Gram::<B>::new(n, &self.device))
    }

    fn gptq(
        &self,
        weight: &WeightMatrix,
        hessian: &[f64],
        opts: &GptqOptions,
    ) -> Result<GptqResult, QuantError> {
        gptq::quantize_on::<B>(weight, hessian, opts, &self.device)
    }
}

/// The device `spec` names for quantization: `None` for the host (`cpu`), burn-cuda for
/// `cuda[:N]` in a build with the `cuda` feature; an unbuilt or unusable GPU is an error.
pub fn for_spec(
    spec: lmq_runtime::device::DeviceSpec,
) -> Result<Option<std::sync::Arc<dyn QuantDevice>>, lmq_runtime::device::DeviceError> {
    use lmq_runtime::device::DeviceSpec;
    match spec {
        DeviceSpec::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(index) => Ok(Some(std::sync::Arc::new(BurnDevice::<
            lmq_runtime::gpu::Gpu,
        > {
            device: lmq_runtime::gpu::open(index)?,
            name: spec.to_string(),
        }))),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(index) => Err(lmq_runtime::device::DeviceError::NotBuilt { index }),
    }
}
