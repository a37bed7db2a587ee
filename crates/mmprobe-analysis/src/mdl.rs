//! Minimum description length probing, online code (Voita & Titov 2020):
//! how many bits it takes to transmit the labels when each block is coded by
//! a probe trained on every block before it. A concept that is easy to
//! extract compresses well; one a probe can merely learn (a control task)
//! does not, even where both reach the same accuracy.

use ndarray::{ArrayView2, Axis};

use crate::error::{AnalysisError, Result};
use crate::folds::Groups;
use crate::logistic::{self, CheckedLogistic};
use crate::rng::Rng;

/// The probe's inverse L2 strength when `--C` is not given: MDL fits many
/// probes on growing prefixes, so it uses one fixed C rather than an inner search.
pub const DEFAULT_C: f64 = 1.0;

/// Where the blocks end, as fractions of the data (Voita & Titov's portions).
pub const BLOCK_ENDS: [f64; 11] = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0];

/// An online codelength.
#[derive(Debug, Clone, PartialEq)]
pub struct Mdl {
    /// Bits to transmit the labels with the online code.
    pub codelength: f64,
    /// Bits with the uniform code: n · log2 K.
    pub uniform_codelength: f64,
    /// uniform / online: higher is more easily extractable.
    pub compression: f64,
    /// Bits of each block (the first uniform, the others under a probe).
    pub blocks: Vec<f64>,
}

/// Rows in transmission order: groups shuffled with `seed`, each group's rows
/// together, and the end of every block in that order (block ends fall
/// between groups, so a block is never coded by a probe that saw its group).
pub fn group_order(groups: &Groups, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let members = groups.members();
    let mut gs: Vec<usize> = (0..groups.count).collect();
    Rng::new(seed ^ 0x3D1).shuffle(&mut gs);
    let mut order = Vec::with_capacity(groups.len());
    let mut group_end = Vec::with_capacity(groups.count);
    for &g in &gs {
        order.extend_from_slice(&members[g]);
        group_end.push(order.len());
    }
    let ends = BLOCK_ENDS
        .iter()
        .map(|f| {
            let g = (f * groups.count as f64).floor() as usize;
            if g == 0 { 0 } else { group_end[g - 1] }
        })
        .collect();
    (order, ends)
}

/// The online codelength of `y` (classes 0..k) sent in `order`, blocks ending
/// at `ends` (row counts into `order`; empty blocks are skipped). Each block
/// after the first is coded by a logistic probe with inverse strength `c`,
/// fit on the rows of every earlier block. The rows are not standardised: a
/// scaler fit on the first two or three rows divides the next block's
/// features by a near-zero spread, and one such block then costs more bits
/// than the whole rest of the code (seen: 941 bits for 2 rows).
pub fn online_codelength(
    x: ArrayView2<f64>,
    y: &[usize],
    k: usize,
    order: &[usize],
    ends: &[usize],
    c: f64,
    p: &CheckedLogistic,
) -> Result<Mdl> {
    if k < 2 || order.is_empty() {
        return Err(AnalysisError::TooSmall(format!("MDL needs rows of at least 2 classes ({} rows)", order.len())));
    }
    let bits = (k as f64).log2();
    let first = ends.iter().copied().find(|&e| e > 0).unwrap_or(order.len());
    let mut blocks = vec![first as f64 * bits];
    let mut start = first;
    for &end in ends {
        if end <= start {
            continue;
        }
        let (train, block) = (&order[..start], &order[start..end]);
        let xt = x.select(Axis(0), train);
        let yt: Vec<usize> = train.iter().map(|&i| y[i]).collect();
        let m = logistic::fit(xt.view(), &yt, k, c, p)?;
        let logp = m.log_proba(x.select(Axis(0), block).view());
        let nats: f64 = block.iter().enumerate().map(|(r, &i)| -logp[[r, y[i]]]).sum();
        blocks.push(nats / std::f64::consts::LN_2);
        start = end;
    }
    let codelength: f64 = blocks.iter().sum();
    let uniform_codelength = order.len() as f64 * bits;
    Ok(Mdl { codelength, uniform_codelength, compression: uniform_codelength / codelength, blocks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_end_between_groups() {
        // 2000 samples of 2 rows each.
        let keys: Vec<usize> = (0..4000).map(|r| r / 2).collect();
        let (order, ends) = group_order(&Groups::from_keys(&keys), 1);
        assert_eq!(order.len(), 4000);
        assert_eq!(ends[0], 4, "0.1% of 2000 groups is 2 groups = 4 rows");
        assert_eq!(*ends.last().unwrap(), 4000);
        for &e in &ends {
            assert!(e == 0 || keys[order[e - 1]] != keys[order[e.min(3999)]] || e == 4000);
        }
    }
}
