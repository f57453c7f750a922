//! The Medusa candidate tree as plain data (Cai et al. 2024): node 0 is the root (the token
//! the target already chose), a node at depth d holds one of head d's top-k guesses for the
//! token d positions later. One target pass scores every node (each sees the prefix and its
//! ancestors only); the longest path the target agrees with is accepted.

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
        let mut path = vec![0];
        loop {
            let cur = *path.last().unwrap();
            let want = argmax[cur];
            let next = (cur + 1..self.len())
                .find(|&c| self.nodes[c].parent == Some(cur) && tokens[c] == want);
            match next {
                Some(c) => path.push(c),
                None => return (path, want),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
