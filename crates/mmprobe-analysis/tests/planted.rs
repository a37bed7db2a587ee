//! A concept planted along a known direction in synthetic activations:
//! directions find it, the probe reads it, LEACE removes it.

use mmprobe_analysis::directions;
use mmprobe_analysis::folds::Groups;
use mmprobe_analysis::leace::Leace;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::probe::{ProbeParams, erased_accuracy, probe_classes};
use mmprobe_analysis::rng::Rng;
use ndarray::{Array1, Array2};

/// n rows of d-dim noise (per-feature scales differ) plus ±strength along `dir` by class.
fn planted(n: usize, d: usize, strength: f64, seed: u64) -> (Array2<f64>, Vec<usize>, Array1<f64>) {
    let mut rng = Rng::new(seed);
    let mut dir = Array1::from_shape_fn(d, |_| rng.gaussian());
    dir /= dir.dot(&dir).sqrt();
    let scales: Vec<f64> = (0..d).map(|i| 0.5 + (i % 5) as f64 * 0.25).collect();
    let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
    let x = Array2::from_shape_fn((n, d), |(i, j)| {
        rng.gaussian() * scales[j] + if y[i] == 1 { strength } else { -strength } * dir[j] + 2.0
    });
    (x, y, dir)
}

#[test]
fn planted_concept_is_found_read_and_erased() {
    let (x, y, dir) = planted(2000, 64, 1.5, 11);
    let dm = directions::diff_means(x.view(), &y, 2);
    let cos = dm[0].unit.dot(&dir);
    assert!(cos > 0.99, "diff-of-means cosine with the planted direction: {cos}");

    let params = ProbeParams {
        bootstrap: 200,
        logistic: LogisticParams { c: Some(1.0), ..Default::default() },
        ..Default::default()
    }
    .check()
    .unwrap();
    let g = Groups::singletons(y.len());
    let before = probe_classes(x.view(), &y, 2, &g, None, &params).unwrap();
    assert!(before.accuracy > 0.9, "probe accuracy on the planted concept: {}", before.accuracy);
    let (lo, hi) = before.ci.unwrap();
    assert!(lo <= before.accuracy && before.accuracy <= hi && hi - lo < 0.05, "interval {lo}..{hi}");

    let cav = directions::probe(x.view(), &y, 2, &g, &params.logistic).unwrap();
    assert!(cav[0].unit.dot(&dir) > 0.6, "the CAV points along the concept");

    let eraser = Leace::fit(x.view(), &y, 2).unwrap();
    assert_eq!(eraser.rank(), 1);
    // On the rows it was fit on, the class means coincide exactly after erasure.
    let erased = eraser.apply(x.view()).unwrap();
    let gap = directions::diff_means(erased.view(), &y, 2)[0].norm;
    assert!(gap < 1e-9, "class means differ by {gap} after LEACE");
    // A fresh probe, with the eraser fit on training folds only, is at chance.
    let after = erased_accuracy(x.view(), &y, 2, &g, &params).unwrap();
    assert!((after - 0.5).abs() <= 0.05, "probe after LEACE: {after} (chance 0.5)");
}

#[test]
fn control_task_and_permutations_expose_memorisation() {
    // Labels carry no signal: accuracy near chance, p-value large.
    let (x, _, _) = planted(400, 16, 0.0, 3);
    let mut rng = Rng::new(5);
    let y: Vec<usize> = (0..400).map(|_| rng.below(2)).collect();
    let params = ProbeParams {
        permutations: 19,
        bootstrap: 0,
        logistic: LogisticParams { c: Some(1.0), ..Default::default() },
        ..Default::default()
    }
    .check()
    .unwrap();
    let types: Vec<String> = (0..400).map(|i| (i % 40).to_string()).collect();
    let r = probe_classes(x.view(), &y, 2, &Groups::singletons(400), Some(&types), &params).unwrap();
    assert!((r.accuracy - 0.5).abs() < 0.1, "{}", r.accuracy);
    assert!(r.p_value.unwrap() > 0.05, "p = {:?}", r.p_value);
    assert!(r.control_accuracy.is_some() && r.selectivity().unwrap().abs() < 0.15);

    // A strong planted signal: p at its floor 1/(1+N), selectivity high.
    let (x, y, _) = planted(400, 16, 1.5, 4);
    let r = probe_classes(x.view(), &y, 2, &Groups::singletons(400), Some(&types), &params).unwrap();
    assert_eq!(r.p_value, Some(1.0 / 20.0));
    assert!(r.selectivity().unwrap() > 0.3, "selectivity {:?}", r.selectivity());
}
