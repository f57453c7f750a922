//! Linear layers through a narrow backend extension: the runtime owns the weights (f32 rows
//! in the checkpoint's `[out, in]` layout now, packed quantized formats next) and each backend
//! supplies the kernels. burn's generic matmul runs decode-sized GEMVs on one core; the CPU
//! kernels here stream weights on all of them.

use std::fmt::Debug;
use std::sync::Arc;

use burn::backend::Flex;
use burn::prelude::*;

use crate::kernels::matmul_f32_nt;

/// A weight matrix as loaded: rows of `in_features` f32 values, one per output feature.
#[derive(Debug, Clone)]
pub struct DenseWeight {
    pub data: Arc<Vec<f32>>,
    pub out_features: usize,
    pub in_features: usize,
}

impl DenseWeight {
    /// Wraps `[out, in]` row-major data.
    pub fn new(data: Vec<f32>, out_features: usize, in_features: usize) -> Self {
        assert_eq!(data.len(), out_features * in_features, "weight shape");
        Self {
            data: Arc::new(data),
            out_features,
            in_features,
        }
    }
}

/// What a backend must provide to run the model's matrices.
pub trait LinearBackend: Backend {
    /// The backend's resident form of a weight (host rows on CPU).
    type Weight: Clone + Debug + Send + Sync;
    /// Moves a loaded weight to where this backend computes.
    fn upload(w: DenseWeight, device: &Self::Device) -> Self::Weight;
    /// `x · Wᵀ` for `x` of shape `[rows, in]`.
    fn apply_linear(x: Tensor<Self, 2>, w: &Self::Weight) -> Tensor<Self, 2>;
    /// Rows `ids` of `W` (embedding lookup, sharing a tied lm_head's storage).
    fn gather_rows(ids: &[u32], w: &Self::Weight, device: &Self::Device) -> Tensor<Self, 2>;
    /// `(out_features, in_features)` of a resident weight.
    fn weight_dims(w: &Self::Weight) -> (usize, usize);
}

impl LinearBackend for Flex {
    type Weight = DenseWeight;

    fn upload(w: DenseWeight, _device: &Self::Device) -> Self::Weight {
        w
    }

    fn apply_linear(x: Tensor<Self, 2>, w: &DenseWeight) -> Tensor<Self, 2> {
        let [m, k] = x.dims();
        assert_eq!(
            k, w.in_features,
            "linear: input has {k} features, weight expects {}",
            w.in_features
        );
        let device = x.device();
        let xs = x.into_data().into_vec::<f32>().expect("f32 activations");
        let y = matmul_f32_nt(&xs, &w.data, m, k, w.out_features);
        Tensor::from_data(TensorData::new(y, [m, w.out_features]), &device)
    }

    fn gather_rows(ids: &[u32], w: &DenseWeight, device: &Self::Device) -> Tensor<Self, 2> {
        let d = w.in_features;
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let id = id as usize;
            assert!(
                id < w.out_features,
                "token id {id} outside the vocabulary of {}",
                w.out_features
            );
            out.extend_from_slice(&w.data[id * d..(id + 1) * d]);
        }
        Tensor::from_data(TensorData::new(out, [ids.len(), d]), device)
    }

    fn weight_dims(w: &DenseWeight) -> (usize, usize) {
        (w.out_features, w.in_features)
    }
}

/// `y = x · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear<B: LinearBackend> {
    pub weight: B::Weight,
    /// `[out]`
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: LinearBackend> Linear<B> {
    /// Input features.
    pub fn in_features(&self) -> usize {
        B::weight_dims(&self.weight).1
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        B::weight_dims(&self.weight).0
    }

    /// Applies the layer to `[batch, tokens, in]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, i] = x.dims();
        let y = B::apply_linear(x.reshape([b * t, i]), &self.weight).reshape([
            b,
            t,
            self.out_features(),
        ]);
        match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<3>(),
            None => y,
        }
    }
}
