//! Quantization math on a burn device (`quantize --device cuda`): the Hessian sums, GPTQ's
//! column loop and the calibration pipeline's linear products (the layer forwards, and the
//! block outputs AWQ's scale search compares) as tensor operations, generic over the backend
//! so that the very code a GPU runs is tested here against the host reference on the CPU
//! backend. The host functions (`crate::gptq`, `crate::pipeline::hessian`, the layer's
//! `matmul_f32_nt`) stay the reference and the CPU path; this module only moves their matrix
//! products.

pub mod gptq;
pub mod gram;

use std::fmt::Debug;
use std::sync::Mutex;

use burn::prelude::*;

use crate::gptq::{GptqOptions, GptqResult};
use crate::scheme::{QuantError, WeightMatrix};

/// Where the calibrated pipeline's matrix work runs when it is not the host: the two
/// operations that dominate it, and nothing else.
pub trait QuantDevice: Send + Sync + Debug {
    /// The device, as the summary names it.
    fn describe(&self) -> String;
    /// An empty Σ x·xᵀ accumulator for inputs of width `n`, held on the device.
    fn gram(&self, n: usize) -> Box<dyn DeviceGram>;
    /// `x·Wᵀ` for `x` `[t, inp]` and `w` `[out, inp]`, returned `[t, out]`: a linear of the
    /// layer forwards. The device may keep recent weights resident (see [`BurnDevice`]).
    fn matmul_nt(&self, x: &[f32], w: &[f32], t: usize, inp: usize, out: usize) -> Vec<f32>;
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

/// Weights kept resident by [`BurnDevice`]: a decoder layer's seven linears, so a layer
/// forward repeated over the calibration windows uploads each weight once.
const RESIDENT_WEIGHTS: usize = 8;

/// [`QuantDevice`] for any burn backend. Weights passed to [`QuantDevice::matmul_nt`] are
/// kept on the device keyed by their contents (length and a 64-bit hash): the pipeline's
/// linears are plain `Vec<f32>` that passes rewrite in place, so identity is by value.
pub struct BurnDevice<B: Backend> {
    device: B::Device,
    name: String,
    resident: Mutex<Vec<(WeightKey, Tensor<B, 2>)>>,
}

impl<B: Backend> std::fmt::Debug for BurnDevice<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnDevice")
            .field("name", &self.name)
            .finish()
    }
}

impl<B: Backend> BurnDevice<B> {
    /// The quantization device on burn backend `B`'s `device`, named `name` in reports.
    pub fn new(device: B::Device, name: impl Into<String>) -> Self {
        Self {
            device,
            name: name.into(),
            resident: Mutex::new(Vec::new()),
        }
    }

    /// `w` `[out, inp]` on the device, uploaded unless already resident.
    fn weight(&self, w: &[f32], out: usize, inp: usize) -> Tensor<B, 2> {
        let key = WeightKey::of(w, out, inp);
        let mut resident = self.resident.lock().expect("resident weights lock");
        if let Some(i) = resident.iter().position(|(k, _)| *k == key) {
            // Most recently used last.
            let entry = resident.remove(i);
            let t = entry.1.clone();
            resident.push(entry);
            return t;
        }
        let t = Tensor::<B, 2>::from_data(TensorData::new(w.to_vec(), [out, inp]), &self.device);
        if resident.len() >= RESIDENT_WEIGHTS {
            resident.remove(0);
        }
        resident.push((key, t.clone()));
        t
    }
}

/// A weight's identity by value: shape and a 64-bit hash of its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WeightKey {
    out: usize,
    inp: usize,
    hash: u64,
}

impl WeightKey {
    fn of(w: &[f32], out: usize, inp: usize) -> Self {
        // Four independent multiply-xor lanes (fast enough to be noise beside the upload it
        // saves), folded at the end.
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut lanes = [1u64, 2, 3, 4];
        let mut chunks = w.chunks_exact(8);
        for c in &mut chunks {
            for (l, pair) in lanes.iter_mut().zip(c.chunks_exact(2)) {
                let v = u64::from(pair[0].to_bits()) | (u64::from(pair[1].to_bits()) << 32);
                *l = (*l ^ v).wrapping_mul(K).rotate_left(29);
            }
        }
        for v in chunks.remainder() {
            lanes[0] = (lanes[0] ^ u64::from(v.to_bits())).wrapping_mul(K);
        }
        let hash = lanes.iter().fold(w.len() as u64, |h, l| {
            (h ^ l).wrapping_mul(K).rotate_left(31)
        });
        Self { out, inp, hash }
    }
}

impl<B: Backend> QuantDevice for BurnDevice<B> {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn matmul_nt(&self, x: &[f32], w: &[f32], t: usize, inp: usize, out: usize) -> Vec<f32> {
        assert_eq!(x.len(), t * inp, "activation shape");
        assert_eq!(w.len(), out * inp, "weight shape");
        let wt = self.weight(w, out, inp);
        let xt = Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [t, inp]), &self.device);
        xt.matmul(wt.transpose())
            .into_data()
            .into_vec::<f32>()
            .expect("f32 product")
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
        DeviceSpec::Cuda(index) => Ok(Some(std::sync::Arc::new(
            BurnDevice::<lmq_runtime::gpu::Gpu>::new(
                lmq_runtime::gpu::open(index)?,
                spec.to_string(),
            ),
        ))),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(index) => Err(lmq_runtime::device::DeviceError::NotBuilt { index }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_support::TestRng;
    use lmq_runtime::kernels::matmul_f32_nt;
    use lmq_runtime::Cpu;

    /// Device product against the host kernel: f32 sums of 200 terms in another order.
    const MATMUL_REL_TOL: f32 = 1e-5;

    #[test]
    fn device_products_match_the_host_kernel_and_reuse_resident_weights() {
        let (t, inp, out) = (37, 200, 53);
        let mut rng = TestRng::new(5);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        let (x, w) = (rand(t * inp), rand(out * inp));
        let dev = BurnDevice::<Cpu>::new(Default::default(), "flex");
        let want = matmul_f32_nt(&x, &w, t, inp, out);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for round in 0..2 {
            let got = dev.matmul_nt(&x, &w, t, inp, out);
            let err = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= MATMUL_REL_TOL * scale, "round {round}: {err}");
        }
        assert_eq!(
            dev.resident.lock().unwrap().len(),
            1,
            "the weight is uploaded once"
        );
        // A changed weight (same shape) is a different weight.
        let mut w2 = w.clone();
        w2[7] += 1.0;
        let got = dev.matmul_nt(&x, &w2, t, inp, out);
        let want2 = matmul_f32_nt(&x, &w2, t, inp, out);
        assert!((got[7] - want2[7]).abs() <= MATMUL_REL_TOL * scale);
        assert_eq!(dev.resident.lock().unwrap().len(), 2);
        assert_ne!(WeightKey::of(&w, out, inp), WeightKey::of(&w2, out, inp));
    }
}
