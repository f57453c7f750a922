//! Greedy answers to many prompts at once (distillation data for Medusa heads): up to
//! `batch` sequences advance together, each step one batched forward pass whose linears read
//! their weights once for all rows, and a finished sequence's slot goes to the next prompt.
//! On the CPU a row verified beside others costs about a tenth of a decode step, so a batch
//! of 16 answers several times faster than one prompt at a time (4× on SmolLM2 f32), with the
//! same tokens: up to 32 rows, the fused batched step gives each row the bits it has alone
//! (tested for f32 weights; the packed AWQ model's answers also came out byte-identical).

use crate::generate::{check_request, host_f32, token_row, GenerateError};
use crate::model::{KvCache, LinearBackend, Llama};
use crate::sampling::argmax;

/// A sequence being answered: its prompt's index, its cache, and the token it chose last.
struct Running {
    index: usize,
    cache: KvCache,
    last: u32,
}

/// Each prompt's greedy continuation (up to `max_new` tokens, ending at a stop token), as
/// [`crate::generate::generate`] gives it, with up to `batch` sequences decoded together.
/// Calls `on_done(i)` when prompt `i`'s answer is complete.
pub fn generate_greedy_batch<B: LinearBackend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    max_new: usize,
    stop_ids: &[u32],
    batch: usize,
    mut on_done: impl FnMut(usize),
) -> Result<Vec<Vec<u32>>, GenerateError> {
    assert!(batch > 0, "a batch of no sequences");
    for p in prompts {
        check_request(model, p, max_new)?;
    }
    let mut out = vec![Vec::with_capacity(max_new); prompts.len()];
    if max_new == 0 {
        (0..prompts.len()).for_each(&mut on_done);
        return Ok(out);
    }
    let device = model.device();
    let vocab = model.config.vocab_size;
    let finished = |t: u32, len: usize| stop_ids.contains(&t) || len == max_new;
    let mut running: Vec<Running> = Vec::with_capacity(batch);
    let mut next = 0;
    loop {
        // Free slots take the next prompts (prefilled one at a time, as the server does).
        while running.len() < batch && next < prompts.len() {
            let p = &prompts[next];
            let mut cache = model.new_cache(p.len() + max_new);
            let t = argmax(&model.forward_last(token_row(p, &device), Some(&mut cache)));
            out[next].push(t);
            if finished(t, 1) {
                on_done(next);
            } else {
                running.push(Running {
                    index: next,
                    cache,
                    last: t,
                });
            }
            next += 1;
        }
        if running.is_empty() {
            return Ok(out);
        }
        let tokens: Vec<u32> = running.iter().map(|r| r.last).collect();
        let mut caches: Vec<&mut KvCache> = running.iter_mut().map(|r| &mut r.cache).collect();
        let logits = host_f32(model.logits(model.forward_decode_batch(&tokens, &mut caches)));
        for (r, row) in running.iter_mut().zip(logits.chunks_exact(vocab)) {
            r.last = argmax(row);
            out[r.index].push(r.last);
        }
        running.retain(|r| {
            let done = finished(r.last, out[r.index].len());
            if done {
                on_done(r.index);
            }
            !done
        });
    }
}
