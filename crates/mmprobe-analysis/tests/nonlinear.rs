//! Probes speak linfa: our logistic probe and a linfa estimator fitted
//! through the same `Fit` trait on a store's partition; the RBF-SVM probe
//! against scikit-learn's SVC on the same folds (scripts/fixtures/make_svm.py);
//! an XOR concept that only the non-linear probes read, and a linear one that
//! every probe reads alike.

mod common;

use common::Fixture;
use linfa::prelude::*;
use mmprobe_analysis::folds::Groups;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::models::{Knn, ModelChoice, RbfSvm, Tree};
use mmprobe_analysis::probe::{FoldPlan, ProbeParams, probe_classes, probe_classes_on_folds};
use mmprobe_analysis::rng::Rng;
use mmprobe_analysis::sweep;
use mmprobe_analysis::tables::ProbeKind;
use mmprobe_store::part::write_part;
use mmprobe_store::store::write_parquet;
use mmprobe_store::{PartRows, Partition, Selector, Site, Store, Tower};
use ndarray::{Array1, Array2};
use polars::prelude::*;

const N: usize = 1000;

#[test]
fn a_linfa_estimator_and_our_probe_fit_through_the_same_trait_on_a_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, d) = (90, 6);
    let mut rng = Rng::new(2);
    let y: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let data: Vec<f32> =
        (0..n * d).map(|k| (rng.gaussian() + if k % d == y[k / d] { 3.0 } else { 0.0 }) as f32).collect();
    let p = Partition { tower: Tower::Vision, site: Site::Resid, layer: 1, selector: Selector::Cls };
    write_part(
        p.part(tmp.path(), 0, 0),
        &PartRows { width: d, sample: (0..n as u32).collect(), pos: vec![-1; n], data },
    )
    .unwrap();
    let names = ["red", "green", "blue"];
    let mut samples = DataFrame::new(
        n,
        vec![
            Column::new("sample".into(), (0..n as u32).collect::<Vec<_>>()),
            Column::new("colour".into(), y.iter().map(|&c| names[c]).collect::<Vec<_>>()),
        ],
    )
    .unwrap();
    write_parquet(&tmp.path().join("samples.parquet"), &mut samples).unwrap();

    let store = Store::open(tmp.path()).unwrap();
    let l = sweep::load(&store, p, &["colour"]).unwrap();
    let concept = l.concept("colour").unwrap();
    let mmprobe_analysis::labels::Target::Classes { y, .. } = &concept.target else { panic!("classes") };
    let dataset = Dataset::new(l.x.clone(), Array1::from(y.clone()));

    let ours = LogisticParams::default().check().unwrap().fit(&dataset).unwrap();
    let theirs = linfa_trees::DecisionTree::params().max_depth(Some(4)).fit(&dataset).unwrap();
    for (name, pred) in [("logistic", ours.predict(dataset.records())), ("tree", theirs.predict(dataset.records()))] {
        let acc = pred.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / n as f64;
        assert!(acc > 0.9, "{name} on its training rows: {acc}");
    }
}

#[test]
fn rbf_svm_probe_matches_sklearn_svc_on_the_same_folds() {
    let fx = Fixture::load("svm");
    let want = &fx.json;
    let x = fx.matrix("x");
    let (y, folds) = (fx.usizes("y"), fx.usizes("folds"));
    let groups = Groups::singletons(y.len());
    let plan = FoldPlan::given(folds, 5, &groups).unwrap();
    for (name, model) in [("svm", ModelChoice::Svm(RbfSvm::default())), ("logistic", ModelChoice::Linear)] {
        let p = ProbeParams {
            model,
            logistic: LogisticParams { c: Some(1.0), ..Default::default() },
            ..Default::default()
        }
        .check()
        .unwrap();
        let r = probe_classes_on_folds(x.view(), &y, 2, &groups, None, &plan, &p).unwrap();
        let sk = want[name]["mean"].as_f64().unwrap();
        eprintln!("{name}: mmprobe {:.4}, scikit-learn {sk:.4}", r.accuracy);
        assert!((r.accuracy - sk).abs() <= 0.03, "{name}: {:.4} vs scikit-learn {sk:.4}", r.accuracy);
    }
}

/// 1000 samples x 8-d noise, 250 in each quadrant of (x0, x1) so both labels
/// are balanced; `xor` is sign(x0) XOR sign(x1), `linear` is sign(x0 + x1).
fn planted() -> (Array2<f64>, Vec<usize>, Vec<usize>) {
    let mut rng = Rng::new(13);
    let x = Array2::from_shape_fn((N, 8), |(i, j)| {
        let g = rng.gaussian();
        match j {
            0 => g.abs() * if i % 2 == 0 { 1.0 } else { -1.0 },
            1 => g.abs() * if (i / 2) % 2 == 0 { 1.0 } else { -1.0 },
            _ => g,
        }
    });
    let xor = x.rows().into_iter().map(|r| usize::from((r[0] > 0.0) ^ (r[1] > 0.0))).collect();
    let linear = x.rows().into_iter().map(|r| usize::from(r[0] + r[1] > 0.0)).collect();
    (x, xor, linear)
}

#[test]
fn xor_is_read_by_non_linear_probes_only_and_a_linear_concept_by_all() {
    let (x, xor, linear) = planted();
    let groups = Groups::singletons(N);
    let run = |model: ModelChoice, y: &[usize]| {
        let p = ProbeParams { model, ..Default::default() }.check().unwrap();
        (p.classifier().kind(), probe_classes(x.view(), y, 2, &groups, None, &p).unwrap())
    };
    let (kind, lin) = run(ModelChoice::Linear, &xor);
    assert_eq!(kind, ProbeKind::Logistic);
    let (lo, hi) = lin.ci.unwrap();
    eprintln!("logistic on XOR: {:.3} [{lo:.3}, {hi:.3}]", lin.accuracy);
    assert!(lo <= 0.5 && 0.5 <= hi, "logistic on XOR: {:.3} [{lo:.3}, {hi:.3}]", lin.accuracy);
    for model in
        [ModelChoice::Svm(RbfSvm::default()), ModelChoice::Knn(Knn::default()), ModelChoice::Tree(Tree::default())]
    {
        let (kind, r) = run(model, &xor);
        eprintln!("{kind:?} on XOR: {:.3} {:?}", r.accuracy, r.ci);
        // Above chance with the whole interval; the greedy tree least surely (an
        // XOR's first split gains nothing on its own: 0.68, interval from 0.53).
        assert!(r.ci.unwrap().0 > 0.5 && r.accuracy > 0.65, "{kind:?} on XOR: {:.3} {:?}", r.accuracy, r.ci);
        // A linear concept: every probe reads it; the SVM (whose RBF boundary
        // can be near-linear) as well as the logistic probe, k-NN and the tree
        // less sharply (8 dimensions, 6 of them noise, blur their neighbourhoods).
        let (_, l) = run(model, &linear);
        let (_, base) = run(ModelChoice::Linear, &linear);
        eprintln!("{kind:?} on the linear concept: {:.3}, logistic {:.3}", l.accuracy, base.accuracy);
        let gap = if kind == ProbeKind::Svm { 0.05 } else { 0.15 };
        assert!(
            l.ci.unwrap().0 > 0.75 && base.accuracy - l.accuracy < gap,
            "{kind:?} on the linear concept: {:.3} vs logistic {:.3}",
            l.accuracy,
            base.accuracy
        );
    }
}
