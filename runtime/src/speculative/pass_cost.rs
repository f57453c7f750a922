//! What one verification pass costs, in decode steps, by the rows it scores. A step that
//! verifies m rows and keeps τ tokens on average runs at most τ / cost(m) times as fast as
//! plain decoding, so these costs and a proposer's acceptance bound its speedup before any
//! proposer is built (`bench --tree-rows`, `medusa-score --pass-costs`).

use std::time::Instant;

use serde::Serialize;

use crate::generate::{host_f32, token_row};
use crate::model::{LinearBackend, Llama};

/// Timings after a prompt: one decode step, and a tree pass of each row count.
#[derive(Debug, Clone, Serialize)]
pub struct PassCosts {
    /// Positions in the cache before each pass.
    pub position: usize,
    /// Best time of one decode step there, seconds.
    pub step_seconds: f64,
    /// `(rows, best seconds)` of a pass over a chain of that many nodes (each sees the
    /// prefix and the nodes before it) plus the logits of every row, as tree verification
    /// runs it.
    pub passes: Vec<(usize, f64)>,
}

impl PassCosts {
    /// A pass of `rows` in decode steps (`None` if it was not timed).
    pub fn steps(&self, rows: usize) -> Option<f64> {
        self.passes
            .iter()
            .find(|&&(m, _)| m == rows)
            .map(|&(_, t)| t / self.step_seconds)
    }
}

/// Times a decode step and a verification pass of each of `rows` after `prompt` (whose
/// tokens also fill the passes), best of `reps` each; the cache is rolled back after every
/// pass, so each runs at the same position.
pub fn measure_pass_costs<B: LinearBackend>(
    model: &Llama<B>,
    prompt: &[u32],
    rows: &[usize],
    reps: usize,
) -> Result<PassCosts, String> {
    let widest = rows.iter().max().copied().unwrap_or(1);
    if widest > prompt.len() || prompt.is_empty() {
        return Err(format!(
            "a pass of {widest} rows needs a prompt of at least that many tokens, not {}",
            prompt.len()
        ));
    }
    let device = model.device();
    let mut cache = model.new_cache(prompt.len() + widest + 1);
    model.forward_last(token_row(prompt, &device), Some(&mut cache));
    let position = cache.len();
    let best = |run: &mut dyn FnMut()| {
        (0..reps.max(1))
            .map(|_| {
                let t0 = Instant::now();
                run();
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let step_seconds = best(&mut || {
        model.forward_last(token_row(&prompt[..1], &device), Some(&mut cache));
        cache.truncate(position);
    });
    let passes = rows
        .iter()
        .map(|&m| {
            let depths: Vec<usize> = (0..m).collect();
            let mask: Vec<bool> = (0..m * m).map(|i| i % m <= i / m).collect();
            let t = best(&mut || {
                let hidden = model.forward_tree(&prompt[..m], &depths, &mask, &mut cache);
                let logits = host_f32(model.logits(hidden));
                assert_eq!(logits.len(), m * model.config.vocab_size);
                cache.truncate(position);
            });
            (m, t)
        })
        .collect();
    Ok(PassCosts {
        position,
        step_seconds,
        passes,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Arch;
    use crate::weights::{tiny_config, MemorySource};
    use crate::Cpu;

    #[test]
    fn every_row_count_is_timed_at_the_prompts_end_and_a_short_prompt_is_refused() {
        let c = tiny_config(Arch::Llama);
        let m = Llama::<Cpu>::load(
            &c,
            &MemorySource::random(&c, 4),
            Path::new("<tiny>"),
            &Default::default(),
        )
        .unwrap();
        let prompt: Vec<u32> = (0..12).map(|i| i % c.vocab_size as u32).collect();
        let costs = measure_pass_costs(&m, &prompt, &[1, 3, 8], 2).unwrap();
        assert_eq!(costs.position, prompt.len());
        assert_eq!(
            costs.passes.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 3, 8]
        );
        assert!(costs.step_seconds > 0.0 && costs.passes.iter().all(|p| p.1 > 0.0));
        assert!(costs.steps(3).is_some() && costs.steps(2).is_none());
        let e = measure_pass_costs(&m, &prompt[..4], &[8], 1).unwrap_err();
        assert!(e.contains("8 rows") && e.contains("not 4"), "{e}");
    }
}
