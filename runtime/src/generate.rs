//! Autoregressive generation with the KV cache: one prefill pass over the prompt, then one
//! single-token pass per new token.

use burn::prelude::*;

use crate::model::{LinearBackend, Llama};
use crate::sampling::{Sampler, SamplingParams};

/// Why a generation request cannot run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("prompt of {prompt} tokens plus {max_new} new tokens exceeds the model context of {context}")]
    TooLong {
        prompt: usize,
        max_new: usize,
        context: usize,
    },
}

/// `ids` as the `[1, n]` token tensor a forward pass of one sequence takes.
pub fn token_row<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let data: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
}

/// A tensor's values on the host, as f32, in row-major order.
pub fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 tensor")
}

/// Last-position logits of `[1, t, vocab]` as a plain vector.
pub fn last_logits<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    let [_, t, v] = logits.dims();
    logits
        .slice([0..1, t - 1..t, 0..v])
        .into_data()
        .into_vec::<f32>()
        .expect("f32 logits")
}

/// Refuses an empty prompt or one that leaves no room for `max_new` tokens in the context.
pub fn check_request<B: LinearBackend>(
    model: &Llama<B>,
    prompt: &[u32],
    max_new: usize,
) -> Result<(), GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let context = model.rope.max_positions();
    if prompt.len() + max_new > context {
        return Err(GenerateError::TooLong {
            prompt: prompt.len(),
            max_new,
            context,
        });
    }
    Ok(())
}

/// Generates up to `max_new` tokens after `prompt`, stopping early at any of `stop_ids`.
/// Calls `on_token` as each token is chosen (for streaming). Returns the new tokens.
pub fn generate<B: LinearBackend>(
    model: &Llama<B>,
    prompt: &[u32],
    max_new: usize,
    params: SamplingParams,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, GenerateError> {
    check_request(model, prompt, max_new)?;
    let device = model.device();
    let mut cache = model.new_cache(prompt.len() + max_new);
    let mut sampler = Sampler::new(params);
    let mut logits = model.forward_last(token_row(prompt, &device), Some(&mut cache));
    let mut out = Vec::with_capacity(max_new);
    for _ in 0..max_new {
        let next = sampler.sample(&logits);
        out.push(next);
        on_token(next);
        if stop_ids.contains(&next) || out.len() == max_new {
            break;
        }
        logits = model.forward_last(token_row(&[next], &device), Some(&mut cache));
    }
    Ok(out)
}
