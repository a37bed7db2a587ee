//! The corrected repeated-CV interval against scikit-learn + scipy on fixed
//! data and folds (scripts/fixtures/make_intervals.py), and its calibration
//! under the null next to the out-of-fold bootstrap's.

use std::path::PathBuf;

use mmprobe_analysis::folds::Groups;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::probe::{FoldPlan, Interval, ProbeParams, probe_classes_on_folds, probe_numeric_on_folds};
use mmprobe_analysis::ridge::RidgeParams;
use ndarray::Array2;
use safetensors::SafeTensors;

fn fixture() -> (Vec<u8>, serde_json::Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/intervals");
    (
        std::fs::read(dir.join("reference.safetensors")).unwrap(),
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap(),
    )
}

fn tensor(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<u8>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    (t.shape().to_vec(), t.data().to_vec())
}

fn f64s(data: &[u8]) -> Vec<f64> {
    data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

fn i64s(data: &[u8]) -> Vec<usize> {
    data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize).collect()
}

struct Case {
    x: Array2<f64>,
    y: Vec<u8>,
    plan: FoldPlan,
    want: serde_json::Value,
}

fn case(name: &str) -> Case {
    let (bytes, json) = fixture();
    let (shape, x) = tensor(&bytes, &format!("{name}.x"));
    let x = Array2::from_shape_vec((shape[0], shape[1]), f64s(&x)).unwrap();
    let (fshape, folds) = tensor(&bytes, &format!("{name}.folds"));
    let folds = i64s(&folds);
    let repeats = folds.chunks(fshape[1]).map(|c| c.to_vec()).collect();
    Case {
        x,
        y: tensor(&bytes, &format!("{name}.y")).1,
        plan: FoldPlan { n_folds: 5, repeats },
        want: json[name].clone(),
    }
}

fn close(got: f64, want: &serde_json::Value, what: &str, tol: f64) {
    let want = want.as_f64().unwrap();
    assert!((got - want).abs() <= tol, "{what}: {got} vs reference {want}");
}

#[test]
fn corrected_interval_matches_sklearn_and_scipy() {
    for name in ["binary", "multi"] {
        let c = case(name);
        let y = i64s(&c.y);
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
    let y = f64s(&c.y);
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
    let y = i64s(&c.y);
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
