//! Upper bounds on what Medusa heads can gain a step, from how often they guess right (a
//! [`HeadScore`]) and what a verification pass costs by rows (a [`PassCosts`]). A step that
//! keeps τ tokens and costs c decode steps runs τ / c times as fast as plain decoding; the
//! best tree of each size (fitted on the very answers scored) and a chain cut by a perfect
//! gate keep the most any proposer over these guesses could, and the heads' own projection
//! is left out of c, so both figures are ceilings. Where c ≥ 1 (every machine), τ alone is one.

use lmq_runtime::speculative::pass_cost::PassCosts;
use serde::Serialize;

use crate::medusa_train::HeadScore;

/// One proposer's ceiling.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeedupBound {
    pub proposer: String,
    /// Mean tokens a step keeps.
    pub tau: f64,
    /// Mean cost of its verification pass, in decode steps.
    pub pass_steps: f64,
    /// `tau / pass_steps`.
    pub speedup: f64,
}

/// The ceiling of each best tree whose size was timed, then of the chain with a perfect gate
/// (which proposes exactly the guesses that will be accepted: `1 + a` rows for a leading run
/// of `a`, each run length as often as [`HeadScore::runs`] says) where every such row count
/// was timed.
pub fn speedup_bounds(score: &HeadScore, costs: &PassCosts) -> Vec<SpeedupBound> {
    let bound = |proposer: String, tau: f64, pass_steps: f64| SpeedupBound {
        proposer,
        tau,
        pass_steps,
        speedup: tau / pass_steps,
    };
    let mut out: Vec<SpeedupBound> = score
        .best_trees
        .iter()
        .filter_map(|t| {
            let c = costs.steps(t.nodes)?;
            Some(bound(t.tree.clone(), 1.0 + t.accepted, c))
        })
        .collect();
    let gated: Option<(f64, f64)> =
        score
            .runs
            .iter()
            .enumerate()
            .try_fold((0.0, 0.0), |(tau, pass), (a, &share)| {
                let c = costs.steps(1 + a)?;
                Some((tau + share * (1 + a) as f64, pass + share * c))
            });
    if let Some((tau, pass)) = gated {
        out.push(bound("chain with a perfect gate".into(), tau, pass));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medusa_train::TreeScore;

    #[test]
    fn bounds_divide_kept_tokens_by_the_pass_cost_of_the_rows_proposed() {
        let tree = |nodes: usize, accepted: f64| TreeScore {
            tree: format!("best {nodes}"),
            nodes,
            accepted,
        };
        let score = HeadScore {
            positions: 4,
            top1: vec![0.5, 0.25],
            coverage: 1.0,
            accepted: 0.75,
            runs: vec![0.5, 0.25, 0.25],
            trees: vec![],
            best_trees: vec![tree(2, 0.5), tree(4, 0.875), tree(8, 1.0)],
        };
        let costs = PassCosts {
            position: 300,
            step_seconds: 0.02,
            passes: vec![(1, 0.02), (2, 0.024), (3, 0.03), (4, 0.04)],
        };
        let got: Vec<(String, f64, f64)> = speedup_bounds(&score, &costs)
            .into_iter()
            .map(|b| (b.proposer, b.tau, b.pass_steps))
            .collect();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // The 8-node tree was not timed, so it has no bound.
        let want = [
            ("best 2", 1.5, 1.2),
            ("best 4", 1.875, 2.0),
            // τ = ½·1 + ¼·2 + ¼·3; cost = ½·1 + ¼·1.2 + ¼·1.5.
            ("chain with a perfect gate", 1.75, 1.175),
        ];
        assert_eq!(got.len(), want.len());
        for ((p, tau, c), (wp, wtau, wc)) in got.iter().zip(want) {
            assert!(p == wp && near(*tau, wtau) && near(*c, wc), "{p} {tau} {c}");
        }
        // Without the 3-row pass the perfect gate cannot be costed.
        let short = PassCosts {
            passes: costs.passes[..2].to_vec(),
            ..costs
        };
        assert_eq!(speedup_bounds(&score, &short).len(), 1);
    }
}
