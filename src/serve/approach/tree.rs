//! The search tree `mcts` and `rstar` share: nodes in one arena, UCT
//! selection (Kocsis & Szepesvári, "Bandit based Monte-Carlo Planning"),
//! and backing a reward up to the root.

/// One node: what the approach keeps in it, and its statistics.
pub struct Node<T> {
    pub data: T,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    pub depth: u32,
    pub visits: u32,
    /// Sum of the rewards backed up through this node.
    pub value: f64,
}

impl<T> Node<T> {
    /// Mean reward (0 before the first visit).
    pub fn mean(&self) -> f64 {
        if self.visits == 0 {
            0.0
        } else {
            self.value / f64::from(self.visits)
        }
    }
}

pub struct Tree<T> {
    pub nodes: Vec<Node<T>>,
}

impl<T> Tree<T> {
    pub fn new(root: T) -> Self {
        Self {
            nodes: vec![Node {
                data: root,
                parent: None,
                children: Vec::new(),
                depth: 0,
                visits: 0,
                value: 0.0,
            }],
        }
    }

    /// Adds a child of `parent`; returns its index.
    pub fn add(&mut self, parent: usize, data: T) -> usize {
        let i = self.nodes.len();
        let depth = self.nodes[parent].depth + 1;
        self.nodes.push(Node {
            data,
            parent: Some(parent),
            children: Vec::new(),
            depth,
            visits: 0,
            value: 0.0,
        });
        self.nodes[parent].children.push(i);
        i
    }

    /// The child of `i` with the highest upper confidence bound
    /// `mean + c·sqrt(ln N / n)`; an unvisited child first, earlier
    /// children on ties (so a run replays).
    pub fn select(&self, i: usize, c: f64) -> Option<usize> {
        let parent_visits = f64::from(self.nodes[i].visits.max(1));
        let ucb = |j: usize| {
            let n = &self.nodes[j];
            if n.visits == 0 {
                f64::INFINITY
            } else {
                n.mean() + c * (parent_visits.ln() / f64::from(n.visits)).sqrt()
            }
        };
        let mut best: Option<(usize, f64)> = None;
        for &j in &self.nodes[i].children {
            let u = ucb(j);
            if best.is_none_or(|(_, b)| u > b) {
                best = Some((j, u));
            }
        }
        best.map(|(j, _)| j)
    }

    /// Adds one visit and `reward` to `i` and every node above it.
    pub fn backup(&mut self, i: usize, reward: f64) {
        let mut at = Some(i);
        while let Some(k) = at {
            self.nodes[k].visits += 1;
            self.nodes[k].value += reward;
            at = self.nodes[k].parent;
        }
    }

    /// The nodes from the root's first child down to `i`.
    pub fn path(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = Some(i);
        while let Some(k) = at {
            if k != 0 {
                out.push(k);
            }
            at = self.nodes[k].parent;
        }
        out.reverse();
        out
    }

    /// The most visited child of `i`, the higher mean on ties, then the
    /// earlier one: how a finished search picks its move.
    pub fn most_visited(&self, i: usize) -> Option<usize> {
        let mut best: Option<usize> = None;
        for &j in &self.nodes[i].children {
            let better = match best {
                None => true,
                Some(b) => {
                    let (nj, nb) = (&self.nodes[j], &self.nodes[b]);
                    nj.visits > nb.visits || (nj.visits == nb.visits && nj.mean() > nb.mean())
                }
            };
            if better {
                best = Some(j);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unvisited_children_come_first_then_the_upper_bound_decides() {
        let mut t = Tree::new(());
        let a = t.add(0, ());
        let b = t.add(0, ());
        assert_eq!(t.select(0, 1.4), Some(a));
        t.backup(a, 0.2);
        assert_eq!(t.select(0, 1.4), Some(b));
        t.backup(b, 0.9);
        // Both visited once: the higher mean wins.
        assert_eq!(t.select(0, 1.4), Some(b));
        assert_eq!(t.nodes[0].visits, 2);
        assert!((t.nodes[0].value - 1.1).abs() < 1e-9);
        // Exploration: a much-visited child gives way to a rarely visited one.
        for _ in 0..20 {
            t.backup(b, 0.5);
        }
        assert_eq!(t.select(0, 1.4), Some(a));
        assert_eq!(t.most_visited(0), Some(b));
        let c = t.add(b, ());
        assert_eq!(t.path(c), vec![b, c]);
    }
}
