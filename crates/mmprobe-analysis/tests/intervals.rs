//! The corrected repeated-CV interval against scikit-learn + scipy on fixed
//! data and folds (scripts/fixtures/make_intervals.py), and its calibration
//! under the null next to the out-of-fold bootstrap's.

mod common;

use common::Fixture;
use mmprobe_analysis::folds::Groups;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::probe::{FoldPlan, Interval, ProbeParams, probe_classes_on_folds, probe_numeric_on_folds};
use mmprobe_analysis::ridge::RidgeParams;
use ndarray::Array2;

struct Case {
    x: Array2<f64>,
    /// The fixture, for the labels: class indices, or numbers for the ridge case.
    fx: Fixture,
    name: String,
    plan: FoldPlan,
    want: serde_json::Value,
}

impl Case {
    fn classes(&self) -> Vec<usize> {
        self.fx.usizes(&format!("{}.y", self.name))
    }

    fn numbers(&self) -> Vec<f64> {
        self.fx.f64s(&format!("{}.y", self.name))
    }
}

fn case(name: &str) -> Case {
    let fx = Fixture::load("intervals");
    let x = fx.matrix(&format!("{name}.x"));
    let folds = fx.usizes(&format!("{name}.folds"));
    let per_repeat = fx.shape(&format!("{name}.folds"))[1];
    let repeats = folds.chunks(per_repeat).map(|c| c.to_vec()).collect();
    let want = fx.json[name].clone();
    Case { x, fx, name: name.to_string(), plan: FoldPlan { n_folds: 5, repeats }, want }
}

fn close(got: f64, want: &serde_json::Value, what: &str, tol: f64) {
    let want = want.as_f64().unwrap();
    assert!((got - want).abs() <= tol, "{what}: {got} vs reference {want}");
}

#[test]
fn corrected_interval_matches_sklearn_and_scipy() {
    for name in ["binary", "multi"] {
        let c = case(name);
        let y = c.classes();
        let k = y.iter().max().unwrap() + 1;
        let p = ProbeParams {
            logistic: LogisticParams {
                c: c.want["C"].as_f64(),
                max_iterations: 1000,
                tolerance: 1e-6,
                ..Default::default()
            },
            ..Default::default()
        }
        .check()
        .unwrap();
        let groups = Groups::singletons(y.len());
        let r = probe_classes_on_folds(c.x.view(), &y, k, &groups, None, &c.plan, &p).unwrap();
        let want: Vec<f64> = c.want["fold_scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(r.fold_scores.len(), 25);
        // One test row of ~30 differs at most per fold (solver tolerance at the boundary).
        for (i, (a, b)) in r.fold_scores.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1.0 / 29.0 + 1e-9, "{name} fold {i}: {a} vs {b}");
        }
        let (lo, hi) = r.ci.unwrap();
        close(r.accuracy, &c.want["mean"], &format!("{name} mean"), 0.01);
        close(lo, &c.want["ci_low"], &format!("{name} ci_low"), 0.01);
        close(hi, &c.want["ci_high"], &format!("{name} ci_high"), 0.01);
    }
}

#[test]
fn corrected_interval_of_ridge_r2_matches_sklearn() {
    let c = case("ridge");
    let y = c.numbers();
    let p = ProbeParams {
        ridge: RidgeParams { alpha: c.want["alpha"].as_f64(), ..Default::default() },
        ..Default::default()
    }
    .check()
    .unwrap();
    let r = probe_numeric_on_folds(c.x.view(), &y, &Groups::singletons(y.len()), &c.plan, &p).unwrap();
    let (lo, hi) = r.r2_ci.unwrap();
    close(r.r2, &c.want["mean"], "ridge mean R²", 1e-6);
    close(lo, &c.want["ci_low"], "ridge ci_low", 1e-6);
    close(hi, &c.want["ci_high"], "ridge ci_high", 1e-6);
}

#[test]
fn the_bootstrap_interval_stays_available_and_is_narrower() {
    let c = case("binary");
    let y = c.classes();
    let groups = Groups::singletons(y.len());
    let run = |interval| {
        let p = ProbeParams {
            interval,
            logistic: LogisticParams { c: Some(0.5), ..Default::default() },
            ..Default::default()
        }
        .check()
        .unwrap();
        let r = probe_classes_on_folds(c.x.view(), &y, 2, &groups, None, &c.plan, &p).unwrap();
        let (lo, hi) = r.ci.unwrap();
        hi - lo
    };
    let (corrected, bootstrap) = (run(Interval::Corrected), run(Interval::Bootstrap));
    assert!(bootstrap < corrected, "bootstrap width {bootstrap:.4} vs corrected {corrected:.4}");
}
