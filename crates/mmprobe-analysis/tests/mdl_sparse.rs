//! MDL (online code) against scikit-learn on fixed data and order
//! (scripts/fixtures/make_mdl.py); a planted concept compresses far better
//! than its control task; k-sparse probes find the 3 planted features of 512
//! in every fold, match the full probe there, and sit at chance on shuffled
//! labels (the ranking never sees a test row).

mod common;

use common::Fixture;
use mmprobe_analysis::folds::Groups;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::mdl::{self, online_codelength};
use mmprobe_analysis::probe::{FoldPlan, ProbeParams, probe_classes};
use mmprobe_analysis::rng::Rng;
use mmprobe_analysis::sparse::{Filter, probe_sparse};
use ndarray::Array2;

#[test]
fn online_codelength_matches_sklearn_within_one_percent() {
    let fx = Fixture::load("mdl");
    let want = &fx.json;
    let x = fx.matrix("x");
    let (y, order) = (fx.usizes("y"), fx.usizes("order"));
    let ends: Vec<usize> = want["ends"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let p = LogisticParams { max_iterations: 1000, tolerance: 1e-6, ..Default::default() }.check().unwrap();
    let m = online_codelength(x.view(), &y, 3, &order, &ends, want["C"].as_f64().unwrap(), &p).unwrap();
    let f = |k: &str| want[k].as_f64().unwrap();
    assert!((m.uniform_codelength - f("uniform_codelength")).abs() < 1e-9);
    let rel = (m.codelength - f("codelength")).abs() / f("codelength");
    assert!(rel < 0.01, "codelength {} vs sklearn {} ({:.3}%)", m.codelength, f("codelength"), rel * 100.0);
    assert!((m.compression - f("compression")).abs() / f("compression") < 0.01);
    // Block by block, too (the first is uniform and exact).
    let blocks: Vec<f64> = want["blocks"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(m.blocks.len(), blocks.len());
    assert!((m.blocks[0] - blocks[0]).abs() < 1e-9);
    for (i, (a, b)) in m.blocks.iter().zip(&blocks).enumerate().skip(1) {
        assert!((a - b).abs() <= 0.02 * b + 0.5, "block {i}: {a} vs {b}");
    }
}

#[test]
fn a_planted_concept_compresses_far_better_than_its_control_task() {
    // 1000 samples x 32-d, a binary concept planted along feature 0; the
    // control task gives each of 60 types a random label.
    let (n, d) = (1000, 32);
    let mut rng = Rng::new(4);
    let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
    let x = Array2::from_shape_fn((n, d), |(i, j)| rng.gaussian() + if j == 0 { 3.0 * y[i] as f64 } else { 0.0 });
    let groups = Groups::singletons(n);
    let (order, ends) = mdl::group_order(&groups, 0);
    let p = LogisticParams::default().check().unwrap();
    let real = online_codelength(x.view(), &y, 2, &order, &ends, 1.0, &p).unwrap();
    let types: Vec<String> = (0..n).map(|i| (i % 60).to_string()).collect();
    let yc = mmprobe_analysis::probe::control_labels(&y, &types, 0);
    let control = online_codelength(x.view(), &yc, 2, &order, &ends, 1.0, &p).unwrap();
    assert!(
        real.compression > 2.0 * control.compression && control.compression < 1.2,
        "compression: concept {:.3}, control {:.3}",
        real.compression,
        control.compression
    );
}

/// 400 samples x 512 features; the label is carried by features 17, 230 and 401.
fn planted_sparse(seed: u64) -> (Array2<f64>, Vec<usize>) {
    let (n, d) = (400, 512);
    let mut rng = Rng::new(seed);
    let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
    let x = Array2::from_shape_fn((n, d), |(i, j)| {
        rng.gaussian() + if [17, 230, 401].contains(&j) { 1.2 * y[i] as f64 } else { 0.0 }
    });
    (x, y)
}

#[test]
fn sparse_probes_find_the_planted_features_in_every_fold_and_no_signal_in_noise() {
    let (x, y) = planted_sparse(7);
    let groups = Groups::singletons(y.len());
    let p = ProbeParams { logistic: LogisticParams { c: Some(1.0), ..Default::default() }, ..Default::default() }
        .check()
        .unwrap();
    let plan = FoldPlan::classes(&y, &groups, 2, &p).unwrap();
    for filter in [Filter::Anova, Filter::MeanDiff] {
        let found = probe_sparse(x.view(), &y, 2, &groups, &plan, &[1, 3, 10], filter, &p).unwrap();
        let k3 = found.iter().find(|f| f.k == 3).unwrap();
        assert_eq!(k3.fits, 25, "5 folds x 5 repeats");
        let mut top: Vec<usize> = k3.features.iter().take(3).map(|f| f.0).collect();
        top.sort_unstable();
        assert_eq!(top, vec![17, 230, 401], "{filter:?}: {:?}", k3.features);
        assert!(k3.features.iter().take(3).all(|f| f.1 == 25), "chosen in every fold: {:?}", k3.features);
        assert_eq!(k3.features.len(), 3, "no other feature was ever chosen at k = 3");
        let full = probe_classes(x.view(), &y, 2, &groups, None, &p).unwrap();
        assert!(k3.accuracy >= full.accuracy - 0.02, "k = 3 {:.3} vs every feature {:.3}", k3.accuracy, full.accuracy);
        assert!(found[0].accuracy < k3.accuracy, "one feature reads less than three");
    }

    // Shuffled labels: chance at every k, though the filter always finds "best" features.
    let mut ys = y.clone();
    Rng::new(3).shuffle(&mut ys);
    let plan = FoldPlan::classes(&ys, &groups, 2, &p).unwrap();
    for f in probe_sparse(x.view(), &ys, 2, &groups, &plan, &[1, 3, 10, 100], Filter::Anova, &p).unwrap() {
        let (lo, hi) = f.ci.unwrap();
        assert!(
            lo <= 0.5 && 0.5 <= hi && (f.accuracy - 0.5).abs() < 0.07,
            "k = {}: {:.3} [{lo:.3}, {hi:.3}]",
            f.k,
            f.accuracy
        );
    }
}
