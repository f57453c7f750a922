//! The confidence gates a proposer with its own probabilities applies to its guesses (like
//! llama.cpp's `--draft-p-min`): on a CPU every verified row costs a tenth to a quarter of a
//! decode step, so a guess the proposer itself doubts mostly costs more than it earns.

/// Where a proposer stops guessing, by its own probability for each guess. Which guesses
/// pass depends only on the proposer, never on the target, so output is unchanged; only
/// the work per step is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gates {
    /// Stop after a guess under this probability (that guess is still proposed; 0: never).
    pub p_min: f64,
    /// Stop before a guess under this probability, the first included (0: never), so a step
    /// the proposer is unsure of costs no verification row.
    pub guess_p_min: f64,
}

impl Gates {
    /// Whether any gate is set: a proposer need not compute probabilities otherwise.
    pub fn active(&self) -> bool {
        self.p_min > 0.0 || self.guess_p_min > 0.0
    }

    /// The guesses `guesses` yields (guess, probability) that pass. Read lazily, so a
    /// proposer that computes each guess after the one before stops computing at a gate.
    pub fn pass<T>(&self, guesses: impl Iterator<Item = (T, f64)>) -> Vec<T> {
        let mut out = vec![];
        for (guess, p) in guesses {
            if p < self.guess_p_min {
                break;
            }
            out.push(guess);
            if p < self.p_min {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(gates: Gates, ps: &[f64]) -> Vec<usize> {
        gates.pass(ps.iter().copied().enumerate())
    }

    #[test]
    fn guesses_stop_before_a_doubtful_one_and_after_an_unsure_one() {
        let ps = [0.9, 0.5, 0.3, 0.8];
        assert_eq!(pass(Gates::default(), &ps), vec![0, 1, 2, 3]);
        // Before the first under 0.4: the 0.3 guess is not proposed.
        let before = Gates {
            guess_p_min: 0.4,
            ..Gates::default()
        };
        assert_eq!(pass(before, &ps), vec![0, 1]);
        // After the first under 0.6: the 0.5 guess is proposed, nothing after it.
        let after = Gates {
            p_min: 0.6,
            ..Gates::default()
        };
        assert_eq!(pass(after, &ps), vec![0, 1]);
        let both = Gates {
            p_min: 0.6,
            guess_p_min: 0.95,
        };
        assert!(pass(both, &ps).is_empty());
        assert!(!Gates::default().active() && both.active());
    }

    #[test]
    fn guesses_past_a_gate_are_never_computed() {
        let gates = Gates {
            guess_p_min: 0.5,
            ..Gates::default()
        };
        let mut computed = 0;
        let guesses = [0.9, 0.2, 0.9, 0.9].into_iter().map(|p| {
            computed += 1;
            ((), p)
        });
        assert_eq!(gates.pass(guesses).len(), 1);
        assert_eq!(computed, 2);
    }
}
