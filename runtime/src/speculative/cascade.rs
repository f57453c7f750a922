//! Proposers tried in order, the first with a guess winning: prompt lookup where the text
//! repeats an n-gram (extraction, editing, code), Medusa heads elsewhere. Each proposer is
//! strongest where the other has nothing, and verification keeps the output exact whoever
//! guessed.

use super::{Proposed, Proposer};
use crate::sampling::SamplingParams;

/// The members, in order of trust.
pub struct Cascade {
    members: Vec<Box<dyn Proposer + Send>>,
}

impl Cascade {
    /// `members` tried first to last each step.
    pub fn new(members: Vec<Box<dyn Proposer + Send>>) -> Self {
        assert!(!members.is_empty(), "a cascade of no proposers");
        Self { members }
    }
}

impl Proposer for Cascade {
    fn propose(&mut self, context: &[u32], k: usize, params: &SamplingParams) -> Vec<Proposed> {
        self.members
            .iter_mut()
            .map(|m| m.propose(context, k, params))
            .find(|p| !p.is_empty())
            .unwrap_or_default()
    }

    /// Every member hears every state, so a later one (Medusa) is current on the steps an
    /// earlier one guessed.
    fn observe_hidden(&mut self, context_len: usize, hidden: &[f32]) {
        for m in &mut self.members {
            m.observe_hidden(context_len, hidden);
        }
    }
}

/// A proposer held to at most `max_k` tokens a step whatever `k` the caller asks: in a
/// cascade, lookup copies long runs while Medusa's second and later guesses rarely pay for
/// their verification rows on a CPU.
pub struct Capped {
    pub inner: Box<dyn Proposer + Send>,
    pub max_k: usize,
}

impl Proposer for Capped {
    fn propose(&mut self, context: &[u32], k: usize, params: &SamplingParams) -> Vec<Proposed> {
        self.inner.propose(context, k.min(self.max_k), params)
    }

    fn observe_hidden(&mut self, context_len: usize, hidden: &[f32]) {
        self.inner.observe_hidden(context_len, hidden);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speculative::verify::point_mass;

    /// Guesses `guess` when the context ends in `when`; records the states it hears.
    struct Fixed {
        when: u32,
        guess: u32,
        heard: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Proposer for Fixed {
        fn propose(&mut self, context: &[u32], _: usize, _: &SamplingParams) -> Vec<Proposed> {
            if context.last() == Some(&self.when) {
                vec![(self.guess, point_mass(self.guess))]
            } else {
                vec![]
            }
        }
        fn observe_hidden(&mut self, context_len: usize, _: &[f32]) {
            self.heard.lock().unwrap().push(context_len);
        }
    }

    /// Proposes `k` copies of the last token.
    struct Repeat;

    impl Proposer for Repeat {
        fn propose(&mut self, context: &[u32], k: usize, _: &SamplingParams) -> Vec<Proposed> {
            let t = *context.last().unwrap();
            vec![(t, point_mass(t)); k]
        }
    }

    #[test]
    fn a_capped_member_proposes_at_most_its_cap() {
        let p = SamplingParams::default();
        let mut c = Capped {
            inner: Box::new(Repeat),
            max_k: 1,
        };
        assert_eq!(c.propose(&[3], 4, &p).len(), 1);
        assert_eq!(c.propose(&[3], 0, &p).len(), 0);
    }

    #[test]
    fn first_member_with_a_guess_wins_and_all_hear_every_state() {
        let heard: Vec<_> = (0..2).map(|_| Default::default()).collect::<Vec<_>>();
        let member = |when, guess, i: usize| -> Box<dyn Proposer + Send> {
            Box::new(Fixed {
                when,
                guess,
                heard: std::sync::Arc::clone(&heard[i]),
            })
        };
        let mut c = Cascade::new(vec![member(1, 10, 0), member(1, 20, 1)]);
        let p = SamplingParams::default();
        assert_eq!(
            c.propose(&[5, 1], 3, &p)[0].0,
            10,
            "the first member's guess"
        );
        let mut c = Cascade::new(vec![member(1, 10, 0), member(2, 20, 1)]);
        assert_eq!(
            c.propose(&[5, 2], 3, &p)[0].0,
            20,
            "the second when the first has none"
        );
        assert!(c.propose(&[5, 3], 3, &p).is_empty(), "nobody guesses");
        c.observe_hidden(7, &[0.0]);
        for h in &heard {
            assert_eq!(*h.lock().unwrap().last().unwrap(), 7);
        }
    }
}
