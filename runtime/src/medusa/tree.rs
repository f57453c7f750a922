//! The Medusa candidate tree as plain data (Cai et al. 2024): node 0 is the root (the token
//! the target already chose), a node at depth d holds one of head d's top-k guesses for the
//! token d positions later. One target pass scores every node (each sees the prefix and its
//! ancestors only); the longest path the target agrees with is accepted.

use super::heads::MedusaHeads;

/// One tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub parent: Option<usize>,
    /// 0 for the root.
    pub depth: usize,
    /// Which of its head's top-k tokens this node takes (0 = the most likely).
    pub rank: usize,
}

/// A candidate tree; nodes are ordered so parents come before children.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// Medusa's default sparse tree for 4 heads, cut to 26 nodes: more alternatives near the
/// root, where heads are more often right (paths as top-k ranks per depth).
pub const DEFAULT_CHOICES: &[&[usize]] = &[
    &[0],
    &[1],
    &[2],
    &[3],
    &[4],
    &[0, 0],
    &[0, 1],
    &[0, 2],
    &[1, 0],
    &[1, 1],
    &[2, 0],
    &[3, 0],
    &[0, 0, 0],
    &[0, 0, 1],
    &[0, 1, 0],
    &[1, 0, 0],
    &[0, 2, 0],
    &[2, 0, 0],
    &[0, 0, 0, 0],
    &[0, 0, 0, 1],
    &[0, 0, 1, 0],
    &[0, 1, 0, 0],
    &[1, 0, 0, 0],
    &[0, 0, 0, 0, 0],
    &[0, 0, 0, 1, 0],
    &[0, 1, 0, 0, 0],
];

/// An 8-node tree for CPUs, where verifying a node costs nearly as much as decoding a token:
/// mostly the top-1 chain, one alternative at each of the first two depths.
pub const SMALL_CHOICES: &[&[usize]] = &[
    &[0],
    &[1],
    &[0, 0],
    &[0, 1],
    &[1, 0],
    &[0, 0, 0],
    &[0, 0, 0, 0],
];

impl Tree {
    /// The tree `choices` give for `heads`: [`Tree::from_choices`] to their depth, or an
    /// error for a recurrent head, whose one head would otherwise quietly give a tree of
    /// depth one (it guesses a chain: serve it with the chain proposer).
    pub fn for_heads(choices: &[&[usize]], heads: &MedusaHeads) -> Result<Self, String> {
        if heads.config.recurrent {
            return Err(
                "a recurrent head guesses one chain, not a tree: serve it as a chain \
                        (--speculative medusa:DIR; spec-bench medusa-chain:DIR)"
                    .into(),
            );
        }
        Self::from_choices(choices, heads.config.num_heads)
    }

    /// Builds the tree from paths of ranks (Medusa's `choices`); every prefix of a path must
    /// be a path too. Paths longer than `heads` are dropped.
    pub fn from_choices(choices: &[&[usize]], heads: usize) -> Result<Self, String> {
        let mut nodes = vec![Node {
            parent: None,
            depth: 0,
            rank: 0,
        }];
        let mut paths: Vec<Vec<usize>> = choices
            .iter()
            .filter(|c| !c.is_empty() && c.len() <= heads)
            .map(|c| c.to_vec())
            .collect();
        paths.sort_by_key(|p| (p.len(), p.clone()));
        paths.dedup();
        let mut index: Vec<(Vec<usize>, usize)> = vec![(vec![], 0)];
        for p in paths {
            let parent_path = &p[..p.len() - 1];
            let parent = index
                .iter()
                .find(|(q, _)| q == parent_path)
                .map(|e| e.1)
                .ok_or_else(|| format!("tree path {p:?} has no parent path {parent_path:?}"))?;
            nodes.push(Node {
                parent: Some(parent),
                depth: p.len(),
                rank: *p.last().unwrap(),
            });
            index.push((p, nodes.len() - 1));
        }
        Ok(Self { nodes })
    }

    /// Number of nodes, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never empty (the root).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Deepest level (the number of heads it uses).
    pub fn depth(&self) -> usize {
        self.nodes.iter().map(|n| n.depth).max().unwrap_or(0)
    }

    /// Tokens of every node: the root's `root`, others `topk[depth - 1][rank]`.
    pub fn tokens(&self, root: u32, topk: &[Vec<u32>]) -> Vec<u32> {
        self.nodes
            .iter()
            .map(|n| match n.depth {
                0 => root,
                d => topk[d - 1][n.rank],
            })
            .collect()
    }

    /// `mask[i * n + j]`: node i may attend to node j (j is i or an ancestor of i).
    pub fn attention_mask(&self) -> Vec<bool> {
        let n = self.len();
        let mut mask = vec![false; n * n];
        for i in 0..n {
            let mut j = Some(i);
            while let Some(k) = j {
                mask[i * n + k] = true;
                j = self.nodes[k].parent;
            }
        }
        mask
    }

    /// Greedy acceptance: from the root, step to the child whose token is the target's
    /// argmax at the current node, as long as one exists. Returns the accepted path (node
    /// indices from the root) and the target's next token after its last node.
    pub fn accept_greedy(&self, tokens: &[u32], argmax: &[u32]) -> (Vec<usize>, u32) {
        let path = self.descend(|cur, c| tokens[c] == argmax[cur]);
        let last = *path.last().expect("the root");
        (path, argmax[last])
    }

    /// How deep greedy acceptance goes when the target's token at depth d sits at rank
    /// `ranks[d - 1]` of its head's guesses (`None`: not among them): the longest path of
    /// matching ranks. It scores a tree offline from ranks alone, without a verification pass.
    pub fn accepted_by_ranks(&self, ranks: &[Option<usize>]) -> usize {
        let path = self
            .descend(|cur, c| ranks.get(self.nodes[cur].depth) == Some(&Some(self.nodes[c].rank)));
        path.len() - 1
    }

    /// The path from the root that steps, while it can, to the first child `c` of the
    /// current node `cur` with `takes(cur, c)`: greedy acceptance, whichever way a
    /// child's agreement with the target is known.
    fn descend(&self, takes: impl Fn(usize, usize) -> bool) -> Vec<usize> {
        let mut path = vec![0];
        loop {
            let cur = *path.last().expect("the root");
            let next =
                (cur + 1..self.len()).find(|&c| self.nodes[c].parent == Some(cur) && takes(cur, c));
            match next {
                Some(c) => path.push(c),
                None => return path,
            }
        }
    }
}

/// Medusa's typical acceptance (Cai et al. 2024, §2.3.1) for sampling: a candidate token is
/// accepted where the target's probability for it at its parent exceeds
/// `min(threshold, alpha · exp(−H))`, `H` the entropy of that distribution, so confident
/// positions demand the target's likely tokens and uncertain ones accept more. It trades the
/// exact target distribution for longer accepted paths; the threshold and alpha are the
/// paper's knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Typical {
    /// ε: the largest probability ever demanded (Medusa's default 0.09).
    pub threshold: f64,
    /// δ: scales `exp(−H)` (Medusa's default 0.3).
    pub alpha: f64,
}

impl Default for Typical {
    fn default() -> Self {
        Self {
            threshold: 0.09,
            alpha: 0.3,
        }
    }
}

impl Typical {
    /// The probability a token needs under `dist` (probabilities summing to 1) to be accepted.
    pub fn bar(&self, dist: &[(u32, f64)]) -> f64 {
        let entropy: f64 = dist
            .iter()
            .filter(|d| d.1 > 0.0)
            .map(|d| -d.1 * d.1.ln())
            .sum();
        self.threshold.min(self.alpha * (-entropy).exp())
    }
}

impl Tree {
    /// Typical acceptance: `dists[i]` is the target's (filtered) next-token distribution at
    /// node `i`. Returns the longest path from the root whose every token passes its
    /// parent's bar (the first such path on ties); the caller samples the next token from
    /// the distribution at its last node.
    pub fn accept_typical(
        &self,
        tokens: &[u32],
        dists: &[Vec<(u32, f64)>],
        typical: Typical,
    ) -> Vec<usize> {
        let bars: Vec<f64> = dists.iter().map(|d| typical.bar(d)).collect();
        let passes = |c: usize| {
            let p = self.nodes[c].parent.expect("non-root node");
            let prob = dists[p]
                .iter()
                .find(|d| d.0 == tokens[c])
                .map_or(0.0, |d| d.1);
            prob > bars[p]
        };
        // Accepted depth of each node's path (0 where the path breaks), parents first.
        let mut ok = vec![true; self.len()];
        let mut best = 0;
        for c in 1..self.len() {
            let p = self.nodes[c].parent.expect("non-root node");
            ok[c] = ok[p] && passes(c);
            if ok[c] && self.nodes[c].depth > self.nodes[best].depth {
                best = c;
            }
        }
        let mut path = vec![best];
        while let Some(p) = self.nodes[*path.last().unwrap()].parent {
            path.push(p);
        }
        path.reverse();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medusa::MedusaConfig;

    #[test]
    fn a_tree_for_heads_is_their_depth_and_none_for_a_recurrent_head() {
        let c = MedusaConfig {
            num_heads: 2,
            num_layers: 1,
            hidden_size: 2,
            token_input: true,
            recurrent: false,
        };
        let two = MedusaHeads::zeros(c);
        assert_eq!(
            Tree::for_heads(SMALL_CHOICES, &two).unwrap(),
            Tree::from_choices(SMALL_CHOICES, 2).unwrap()
        );
        let recurrent = MedusaHeads::zeros(MedusaConfig {
            num_heads: 1,
            recurrent: true,
            ..c
        });
        let e = Tree::for_heads(SMALL_CHOICES, &recurrent).unwrap_err();
        assert!(e.contains("a recurrent head guesses one chain"), "{e}");
    }

    #[test]
    fn typical_acceptance_keeps_the_longest_path_above_the_entropy_bar() {
        let t = Tree::from_choices(&[&[0], &[1], &[0, 0], &[1, 0], &[0, 0, 0]], 4).unwrap();
        // root, [0], [1], [0,0], [1,0], [0,0,0]; tokens by node:
        let tokens = vec![7, 10, 11, 20, 21, 30];
        let sure = |t: u32| vec![(t, 0.99), (999, 0.01)];
        let flat = |a: u32, b: u32| vec![(a, 0.5), (b, 0.5)];
        let typ = Typical::default();
        // Entropy bar: a near-certain distribution demands min(0.09, 0.3·e^−0.056) = 0.09;
        // a fair coin min(0.09, 0.3 · 0.5) = 0.09 as well; a flat 100-way one 0.3/100.
        assert!((typ.bar(&sure(1)) - 0.09).abs() < 1e-12);
        let wide: Vec<(u32, f64)> = (0..100).map(|i| (i, 0.01)).collect();
        assert!((typ.bar(&wide) - 0.003).abs() < 1e-9);
        // Root is a coin between 10 and 11; node 1 ([0] = 10) is sure of 20; node 3 ([0,0])
        // sure of 30: the whole left path passes.
        let dists = vec![flat(10, 11), sure(20), sure(21), sure(30), sure(0), sure(0)];
        assert_eq!(t.accept_typical(&tokens, &dists, typ), vec![0, 1, 3, 5]);
        // Node 3 now puts 0.05 on 30: below the 0.09 bar, the left path stops at depth 2,
        // and the right one ([1] → [1,0], 11 then 21) ties at depth 2: the first wins.
        let mut d2 = dists.clone();
        d2[3] = vec![(30, 0.05), (31, 0.95)];
        assert_eq!(t.accept_typical(&tokens, &d2, typ), vec![0, 1, 3]);
        // The root's distribution gives neither 10 nor 11 enough: nothing is accepted.
        let mut d3 = dists.clone();
        d3[0] = vec![(10, 0.05), (11, 0.05), (12, 0.9)];
        assert_eq!(t.accept_typical(&tokens, &d3, typ), vec![0]);
        // A wide root distribution lowers the bar: 1% for each is enough there.
        let mut d4 = dists;
        d4[0] = wide.iter().map(|&(i, p)| (i + 10, p)).collect();
        assert_eq!(t.accept_typical(&tokens, &d4, typ), vec![0, 1, 3, 5]);
    }

    #[test]
    fn builds_masks_and_accepts_the_longest_agreeing_path() {
        let t = Tree::from_choices(&[&[0], &[1], &[0, 0], &[1, 0], &[0, 0, 0]], 4).unwrap();
        // root, [0], [1], [0,0], [1,0], [0,0,0]
        assert_eq!(t.len(), 6);
        assert_eq!(t.nodes[3].parent, Some(1));
        assert_eq!(t.nodes[4].parent, Some(2));
        let m = t.attention_mask();
        let n = t.len();
        assert!(m[5 * n + 3] && m[5 * n + 1] && m[5 * n] && m[5 * n + 5]);
        assert!(!m[5 * n + 2] && !m[5 * n + 4] && !m[3 * n + 5]);
        let topk = vec![vec![10, 11], vec![20, 21], vec![30]];
        let tokens = t.tokens(7, &topk);
        assert_eq!(tokens, vec![7, 10, 11, 20, 20, 30]);
        // The target agrees with [1] then [1,0] (argmax at node 2 is 20), then says 99.
        let argmax = [11, 0, 20, 0, 99, 0];
        assert_eq!(t.accept_greedy(&tokens, &argmax), (vec![0, 2, 4], 99));
        // Agrees with nothing.
        assert_eq!(t.accept_greedy(&tokens, &[5, 0, 0, 0, 0, 0]), (vec![0], 5));
        assert!(Tree::from_choices(&[&[0, 0]], 4).is_err());
        let d = Tree::from_choices(DEFAULT_CHOICES, 4).unwrap();
        assert_eq!((d.len(), d.depth()), (24, 4));
        let s = Tree::from_choices(SMALL_CHOICES, 4).unwrap();
        assert_eq!((s.len(), s.depth()), (8, 4));
    }

    #[test]
    fn acceptance_by_ranks_is_greedy_acceptance_of_the_true_tokens() {
        let tree = Tree::from_choices(DEFAULT_CHOICES, 4).unwrap();
        // Head d's k-th guess is 100·d + k; a target outside the guesses is 9999.
        let topk: Vec<Vec<u32>> = (1..=4)
            .map(|d| (0..5).map(|k| 100 * d + k).collect())
            .collect();
        let tokens = tree.tokens(7, &topk);
        let mut checked_deep = false;
        for code in 0..7usize.pow(4) {
            // Each depth's rank is 0–4, or 5–6 for "not among the guesses".
            let ranks: Vec<Option<usize>> = (0..4)
                .map(|d| Some(code / 7usize.pow(d) % 7).filter(|&r| r < 5))
                .collect();
            let truth: Vec<u32> = ranks
                .iter()
                .enumerate()
                .map(|(d, r)| r.map_or(9999, |r| topk[d][r]))
                .chain([9999])
                .collect();
            // The target's argmax at a node is the true token one deeper than the node.
            let argmax: Vec<u32> = tree.nodes.iter().map(|n| truth[n.depth]).collect();
            let (path, _) = tree.accept_greedy(&tokens, &argmax);
            assert_eq!(tree.accepted_by_ranks(&ranks), path.len() - 1, "{ranks:?}");
            checked_deep |= path.len() == 5;
        }
        assert!(checked_deep);
    }
}
