//! Paired bootstrap over samples: the interval of a mean change.

use mmprobe_analysis::rng::Rng;
use mmprobe_analysis::stats::percentile;

/// Mean before, mean after, and the 95% percentile interval of mean(after −
/// before) over `resamples` resamples of the samples both measured; `None`
/// when no sample was measured both times.
pub fn paired(before: &[Option<f64>], after: &[Option<f64>], resamples: usize, seed: u64) -> Option<Paired> {
    let pairs: Vec<(f64, f64)> = before.iter().zip(after).filter_map(|(b, a)| Some(((*b)?, (*a)?))).collect();
    let n = pairs.len();
    if n == 0 {
        return None;
    }
    let mean = |f: fn(&(f64, f64)) -> f64| pairs.iter().map(f).sum::<f64>() / n as f64;
    let diffs: Vec<f64> = pairs.iter().map(|(b, a)| a - b).collect();
    let mut rng = Rng::new(seed);
    let mut means: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| diffs[rng.below(n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    Some(Paired {
        n,
        before: mean(|p| p.0),
        after: mean(|p| p.1),
        ci_low: percentile(&means, 2.5),
        ci_high: percentile(&means, 97.5),
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    pub n: usize,
    pub before: f64,
    pub after: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_change_gives_a_zero_interval_and_a_shift_an_interval_around_it() {
        let b: Vec<Option<f64>> = (0..200).map(|i| Some((i % 2) as f64)).collect();
        let same = paired(&b, &b, 500, 1).unwrap();
        assert_eq!((same.ci_low, same.ci_high, same.n), (0.0, 0.0, 200));
        // Half the right answers turn wrong: the change is -0.25, the interval holds it and excludes 0.
        let a: Vec<Option<f64>> = (0..200).map(|i| Some(((i % 2 == 1) && (i % 4 == 1)) as u8 as f64)).collect();
        let p = paired(&b, &a, 2000, 1).unwrap();
        assert!((p.after - p.before + 0.25).abs() < 1e-12);
        assert!(p.ci_low < -0.25 && p.ci_high > -0.25 && p.ci_high < 0.0, "{p:?}");
        // Samples missing on either side are left out.
        let mut gaps = a.clone();
        gaps[0] = None;
        assert_eq!(paired(&b, &gaps, 100, 1).unwrap().n, 199);
        assert!(paired(&[None], &[Some(1.0)], 100, 1).is_none());
    }
}
