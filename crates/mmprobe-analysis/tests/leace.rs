//! The LEACE eraser against an independent numpy computation of the closed
//! form (scripts/fixtures/make_leace.py), and the properties the paper
//! proves: equal class means afterwards, a probe at chance, nothing moved
//! where there is nothing to erase, and less movement than a plain projection.

mod common;

use common::Fixture;
use mmprobe_analysis::AnalysisError;
use mmprobe_analysis::folds::Groups;
use mmprobe_analysis::leace::{Leace, LeaceParams, Whitening, mean_difference, project_out};
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::probe::{CheckedProbe, ProbeParams, erased_accuracy, probe_classes};
use mmprobe_analysis::rng::Rng;
use ndarray::{Array1, Array2, ArrayView2, Axis};

const CASES: [&str; 4] = ["binary", "four", "wide", "correlated"];

/// max |a − b| / max |b|.
fn rel(a: ArrayView2<f64>, b: ArrayView2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

fn row(v: Vec<f64>) -> Array2<f64> {
    let n = v.len();
    Array2::from_shape_vec((1, n), v).unwrap()
}

fn case(f: &Fixture, name: &str) -> (Array2<f64>, Vec<usize>, usize) {
    let k = f.json[name]["k"].as_u64().unwrap() as usize;
    (f.matrix(&format!("{name}.x")), f.usizes(&format!("{name}.y")), k)
}

/// Largest |mean of a class − mean of all| over classes and features, over
/// the largest |x − mean|.
fn class_mean_gap(x: ArrayView2<f64>, y: &[usize], k: usize) -> f64 {
    let mu = x.mean_axis(Axis(0)).unwrap();
    let scale = (&x - &mu).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    (0..k)
        .filter_map(|c| {
            let rows: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
            (!rows.is_empty()).then(|| {
                let m = x.select(Axis(0), &rows).mean_axis(Axis(0)).unwrap();
                (&m - &mu).iter().fold(0.0f64, |a, v| a.max(v.abs()))
            })
        })
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn leace_matches_numpy_reference() {
    let f = Fixture::load("leace");
    for name in CASES {
        let (x, y, k) = case(&f, name);
        let e = Leace::fit(x.view(), &y, k).unwrap();
        assert_eq!(e.rank(), f.json[name]["rank"].as_u64().unwrap() as usize, "{name}: rank");
        assert_eq!(e.x_rank(), f.json[name]["rank_x"].as_u64().unwrap() as usize, "{name}: covariance rank");
        // The same eraser from the concept given as its one-hot matrix.
        let z = f.matrix(&format!("{name}.z"));
        let ez = Leace::fit_concept(x.view(), z.view(), &LeaceParams::default().check().unwrap()).unwrap();

        let mean = row(f.f64s(&format!("{name}.mean")));
        let w = Whitening::fit((&x - &mean).view(), None).unwrap();
        let errors = [
            ("mean", rel(e.mean().view().insert_axis(Axis(0)), mean.view())),
            ("W", rel(w.matrix().view(), f.matrix(&format!("{name}.whitening")).view())),
            ("W+", rel(w.pinv_matrix().view(), f.matrix(&format!("{name}.whitening_pinv")).view())),
            ("P", rel(e.projection().view(), f.matrix(&format!("{name}.projection")).view())),
            ("W+PW", rel(e.matrix().view(), f.matrix(&format!("{name}.eraser")).view())),
            ("erased", rel(e.apply(x.view()).unwrap().view(), f.matrix(&format!("{name}.erased")).view())),
            ("erased (Z)", rel(ez.apply(x.view()).unwrap().view(), f.matrix(&format!("{name}.erased")).view())),
        ];
        let shown: Vec<String> = errors.iter().map(|(w, e)| format!("{w} {e:.1e}")).collect();
        println!("{name}: relative error vs numpy: {}", shown.join(", "));
        for (what, err) in errors {
            assert!(err <= 1e-6, "{name}: {what} differs from numpy by {err:e} (relative)");
        }
        // One row at a time, as a forward hook would.
        let r0 = e.apply_row(x.row(0)).unwrap();
        let want = f.matrix(&format!("{name}.erased"));
        assert!(rel(r0.view().insert_axis(Axis(0)), want.slice(ndarray::s![0..1, ..])) <= 1e-6);
    }
}

#[test]
fn mean_difference_and_projection_match_numpy() {
    let f = Fixture::load("leace");
    let (x, y, k) = case(&f, "four");
    let target = f.json["four"]["target"].as_u64().unwrap() as usize;
    let dir = mean_difference(x.view(), &y, k, target).unwrap();
    assert_eq!(dir.class, target);
    let want = f.f64s("four.diff_unit");
    let du = dir.unit.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let dn = (dir.norm - f.json["four"]["diff_norm"].as_f64().unwrap()).abs();
    let out = project_out(x.view(), dir.unit.view()).unwrap();
    let dp = rel(out.view(), f.matrix("four.projected_out").view());
    println!("mean difference: unit {du:.1e}, norm {dn:.1e}; projected out: {dp:.1e} (relative)");
    assert!(du < 1e-9 && dn < 1e-9 && dp < 1e-9);
    // Nothing is left along the direction, and a scaled direction removes the same.
    assert!(out.dot(&dir.unit).iter().all(|v| v.abs() < 1e-9));
    let scaled = project_out(x.view(), (&dir.unit * -7.5).view()).unwrap();
    assert!(rel(scaled.view(), out.view()) < 1e-12);
}

#[test]
fn erased_rows_have_equal_class_means() {
    let f = Fixture::load("leace");
    for name in CASES {
        let (x, y, k) = case(&f, name);
        let before = class_mean_gap(x.view(), &y, k);
        let erased = Leace::fit(x.view(), &y, k).unwrap().apply(x.view()).unwrap();
        let after = class_mean_gap(erased.view(), &y, k);
        println!("{name}: class-mean gap {before:.3} before, {after:.1e} after (relative to the spread)");
        assert!(before > 0.05, "{name}: the fixture's classes differ ({before})");
        assert!(after < 1e-10, "{name}: class means differ by {after:e} after LEACE");
    }
    // A numeric concept: its covariance with every erased feature is zero.
    let (x, _, _) = case(&f, "correlated");
    let mut rng = Rng::new(3);
    let z: Array2<f64> =
        Array2::from_shape_fn((x.nrows(), 2), |(i, j)| x[[i, j]] - 0.5 * x[[i, j + 7]] + rng.gaussian());
    let e = Leace::fit_concept(x.view(), z.view(), &LeaceParams::default().check().unwrap()).unwrap();
    let r = e.apply(x.view()).unwrap();
    let (rc, zc) = (&r - &r.mean_axis(Axis(0)).unwrap(), &z - &z.mean_axis(Axis(0)).unwrap());
    let before = (&x - &x.mean_axis(Axis(0)).unwrap()).t().dot(&zc).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let after = rc.t().dot(&zc).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    println!("numeric concept: max |X^T Z| {before:.1} before, {after:.1e} after");
    assert_eq!(e.rank(), 2);
    assert!(after < 1e-10 * before, "cross-covariance left: {after:e}");
}

/// n rows of d features: `k` class means in a `signal`-dimensional subspace,
/// correlated noise, an offset.
fn concept_data(n: usize, d: usize, k: usize, signal: usize, strength: f64, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let basis = Array2::from_shape_fn((signal, d), |_| rng.gaussian() / (d as f64).sqrt());
    let means = Array2::from_shape_fn((k, signal), |_| rng.gaussian() * strength).dot(&basis) * (d as f64).sqrt();
    let mix = Array2::from_shape_fn((d, d), |(i, j)| if i == j { 1.0 } else { 0.0 } + 0.3 * rng.gaussian());
    let offset = Array1::from_shape_fn(d, |_| 3.0 * rng.gaussian());
    let y: Vec<usize> = (0..n).map(|i| i % k).collect();
    let noise = Array2::from_shape_fn((n, d), |_| rng.gaussian()).dot(&mix);
    let mut x = noise + &offset;
    for (i, mut r) in x.rows_mut().into_iter().enumerate() {
        r += &means.row(y[i]);
    }
    (x, y)
}

fn quick_probe() -> CheckedProbe {
    ProbeParams { repeats: 1, logistic: LogisticParams { c: Some(1.0), ..Default::default() }, ..Default::default() }
        .check()
        .unwrap()
}

#[test]
fn probe_reads_the_concept_before_and_is_at_chance_after() {
    let p = quick_probe();
    for (k, seed) in [(2, 1), (4, 2)] {
        let (x, y) = concept_data(1200, 24, k, 3, 0.8, seed);
        let g = Groups::singletons(y.len());
        let chance = 1.0 / k as f64;
        let before = probe_classes(x.view(), &y, k, &g, None, &p).unwrap().accuracy;
        // The eraser fit on each training fold only, a fresh probe on the erased rows.
        let after = erased_accuracy(x.view(), &y, k, &g, &p).unwrap();
        // Projecting out one mean-difference direction (fit on all rows) does
        // not erase four classes.
        let dir = mean_difference(x.view(), &y, k, 0).unwrap();
        let single = project_out(x.view(), dir.unit.view()).unwrap();
        let one_direction = probe_classes(single.view(), &y, k, &g, None, &p).unwrap().accuracy;
        println!(
            "{k} classes: probe accuracy {before:.3} raw, {after:.3} after LEACE, {one_direction:.3} after projecting out one mean difference (chance {chance:.2})"
        );
        assert!(before > 0.9, "{k} classes: the concept is linearly readable ({before})");
        assert!((after - chance).abs() < 0.05, "{k} classes: probe after LEACE {after}, chance {chance}");
        if k > 2 {
            assert!(one_direction > chance + 0.2, "one direction does not erase four classes ({one_direction})");
        }
    }
}

#[test]
fn a_concept_uncorrelated_with_the_rows_changes_nothing() {
    for (n, d, k) in [(300, 10, 3), (30, 50, 4)] {
        let mut rng = Rng::new(n as u64);
        let y: Vec<usize> = (0..n).map(|i| if i < k { i } else { rng.below(k) }).collect();
        let mut x = Array2::from_shape_fn((n, d), |(_, j)| rng.gaussian() * (1.0 + j as f64) + 2.0);
        // Every class mean moved onto the overall mean: the rows are exactly
        // uncorrelated with the one-hot concept (up to rounding).
        let mu = x.mean_axis(Axis(0)).unwrap();
        for c in 0..k {
            let rows: Vec<usize> = (0..n).filter(|&i| y[i] == c).collect();
            let shift = &mu - &x.select(Axis(0), &rows).mean_axis(Axis(0)).unwrap();
            for &i in &rows {
                let mut r = x.row_mut(i);
                r += &shift;
            }
        }
        let e = Leace::fit(x.view(), &y, k).unwrap();
        let moved = rel(e.apply(x.view()).unwrap().view(), x.view());
        println!("n {n}, d {d}: rank {} erased, rows moved by {moved:.1e} (relative)", e.rank());
        assert_eq!(e.rank(), 0, "n {n}, d {d}: nothing to erase");
        assert!(moved < 1e-12, "n {n}, d {d}: rows moved by {moved:e}");
    }
    // Erasing again: the erased rows carry no concept, so a second eraser
    // fit on them is the identity, and the first eraser is idempotent.
    let f = Fixture::load("leace");
    for name in CASES {
        let (x, y, k) = case(&f, name);
        let e = Leace::fit(x.view(), &y, k).unwrap();
        let once = e.apply(x.view()).unwrap();
        let twice = e.apply(once.view()).unwrap();
        let again = Leace::fit(once.view(), &y, k).unwrap();
        let refit = rel(again.apply(once.view()).unwrap().view(), once.view());
        println!(
            "{name}: idempotence {:.1e}, refit rank {}, refit moves {refit:.1e}",
            rel(twice.view(), once.view()),
            again.rank()
        );
        assert!(rel(twice.view(), once.view()) < 1e-10, "{name}: r(r(x)) != r(x)");
        assert_eq!(again.rank(), 0, "{name}: something left to erase");
        assert!(refit < 1e-12, "{name}: the refit eraser moved rows by {refit:e}");
    }
}

/// Orthonormal columns spanning `a`'s column space (Gram-Schmidt; columns
/// below `tol` of the largest norm dropped).
fn span(a: &Array2<f64>, tol: f64) -> Array2<f64> {
    let top = a.columns().into_iter().map(|c| c.dot(&c).sqrt()).fold(0.0, f64::max);
    let mut cols: Vec<Array1<f64>> = Vec::new();
    for c in a.columns() {
        let mut v = c.to_owned();
        for _ in 0..2 {
            for u in &cols {
                v = &v - &(u * u.dot(&v));
            }
        }
        let norm = v.dot(&v).sqrt();
        if norm > tol * top {
            cols.push(v / norm);
        }
    }
    let mut out = Array2::zeros((a.nrows(), cols.len()));
    for (j, c) in cols.iter().enumerate() {
        out.column_mut(j).assign(c);
    }
    out
}

#[test]
fn rows_move_only_along_the_concept_and_less_than_a_projection() {
    // Everything here from the fixture's numpy W, not from the eraser.
    let f = Fixture::load("leace");
    for name in CASES {
        let (x, y, k) = case(&f, name);
        let z = f.matrix(&format!("{name}.z"));
        let n = x.nrows() as f64;
        let xc = &x - &x.mean_axis(Axis(0)).unwrap();
        let sxz = xc.t().dot(&(&z - &z.mean_axis(Axis(0)).unwrap())) / n;
        let w = f.matrix(&format!("{name}.whitening"));
        let e = Leace::fit(x.view(), &y, k).unwrap();
        let erased = e.apply(x.view()).unwrap();
        let moved = &erased - &x;

        // 1. Every row moves within col(Σ_XZ).
        let s = span(&sxz, 1e-9);
        let outside = &moved - &moved.dot(&s).dot(&s.t());
        let off = outside.iter().fold(0.0f64, |m, v| m.max(v.abs())) / moved.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // 2. Offsets v from the mean with Σ_ZX Σ_XX⁺ v = 0 are kept (Σ_XX⁺ = W W).
        let a = span(&w.dot(&w).dot(&sxz), 1e-9);
        let mut rng = Rng::new(9);
        let v = Array2::from_shape_fn((50, x.ncols()), |_| rng.gaussian() * 3.0);
        let v = &v - &v.dot(&a).dot(&a.t());
        let pts = &v + e.mean();
        let kept = rel(e.apply(pts.view()).unwrap().view(), pts.view());
        // 3. Least movement: the orthogonal projection onto col(Σ_XZ)'s
        // complement also equalises the class means, and moves rows more.
        let ortho = xc.dot(&s).dot(&s.t());
        assert!(class_mean_gap((&x - &ortho).view(), &y, k) < 1e-10, "{name}: the projection is an eraser too");
        let (leace_cost, ortho_cost) = (moved.mapv(|v| v * v).sum() / n, ortho.mapv(|v| v * v).sum() / n);
        println!(
            "{name}: movement outside col(Σ_XZ) {off:.1e}, kept offsets moved {kept:.1e}, mean squared movement {leace_cost:.4} (LEACE) vs {ortho_cost:.4} (orthogonal projection)"
        );
        assert!(off < 1e-9, "{name}: rows moved outside the concept's span by {off:e}");
        // Rounding here grows with the covariance's condition number (4e5 in "correlated").
        let cond = f.json[name]["covariance_condition"].as_f64().unwrap();
        assert!(
            kept < 1e-13 * cond,
            "{name}: offsets the concept does not see moved by {kept:e} (condition {cond:.0})"
        );
        assert!(
            leace_cost <= ortho_cost * (1.0 + 1e-9),
            "{name}: LEACE moved more ({leace_cost}) than a projection ({ortho_cost})"
        );
    }
}

#[test]
fn rank_deficient_and_constant_rows() {
    // Constant rows (a layer-0 CLS state): nothing to whiten, nothing erased.
    let x = Array2::from_elem((8, 5), 0.25);
    let y = [0, 1, 0, 1, 2, 2, 0, 1];
    let e = Leace::fit(x.view(), &y, 3).unwrap();
    assert_eq!((e.rank(), e.x_rank()), (0, 0));
    assert_eq!(e.apply(x.view()).unwrap(), x);
    // The third feature is the sum of the first two (rank 2): x = t·(1, 1, 2) +
    // s·(1, −1, 0), the classes differ in t only, s is uncorrelated with both.
    // Erased, t collapses to its mean 1.5 and s is kept.
    let x = ndarray::array![[1.0, -1.0, 0.0], [0.0, 2.0, 2.0], [1.0, 3.0, 4.0], [4.0, 2.0, 6.0]];
    let e = Leace::fit(x.view(), &[0, 0, 1, 1], 2).unwrap();
    assert_eq!((e.rank(), e.x_rank()), (1, 2));
    let r = e.apply(x.view()).unwrap();
    let want = ndarray::array![[2.5, 0.5, 3.0], [0.5, 2.5, 3.0], [0.5, 2.5, 3.0], [2.5, 0.5, 3.0]];
    assert!(rel(r.view(), want.view()) < 1e-12, "{r}");
}

fn one_line(e: AnalysisError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n') && !s.is_empty(), "{s:?}");
    s
}

#[test]
fn bad_parameters_and_inputs_are_one_line_errors() {
    for p in [
        LeaceParams { tolerance: Some(-1e-9), ..Default::default() },
        LeaceParams { tolerance: Some(f64::NAN), ..Default::default() },
        LeaceParams { concept_tolerance: 1.0, ..Default::default() },
        LeaceParams { concept_tolerance: f64::INFINITY, ..Default::default() },
    ] {
        let e = p.check().unwrap_err();
        assert!(matches!(e, AnalysisError::Params(_)), "{e}");
        println!("{}", one_line(e));
    }
    let x = Array2::from_shape_fn((6, 3), |(i, j)| (i * 3 + j) as f64 % 5.0);
    let y = [0, 1, 0, 1, 0, 1];
    let cases: Vec<(Result<Leace, AnalysisError>, &str)> = vec![
        (Leace::fit(x.view(), &y[..5], 2), "Input"),
        (Leace::fit(x.view(), &[0, 1, 0, 1, 0, 2], 2), "Input"),
        (Leace::fit(x.view(), &y, 1), "Params"),
        (Leace::fit(x.view(), &[1; 6], 3), "TooSmall"),
        (Leace::fit(x.slice(ndarray::s![0..1, ..]), &[0], 2), "TooSmall"),
        (Leace::fit(x.slice(ndarray::s![.., 0..0]), &y, 2), "Input"),
        (Leace::fit(x.mapv(|v| if v == 4.0 { f64::NAN } else { v }).view(), &y, 2), "Input"),
        (
            Leace::fit_concept(x.view(), Array2::ones((6, 2)).view(), &LeaceParams::default().check().unwrap()),
            "TooSmall",
        ),
        (Leace::fit_concept(x.view(), Array2::ones((5, 1)).view(), &LeaceParams::default().check().unwrap()), "Input"),
    ];
    for (r, kind) in cases {
        let e = r.unwrap_err();
        let got = match &e {
            AnalysisError::Input(_) => "Input",
            AnalysisError::Params(_) => "Params",
            AnalysisError::TooSmall(_) => "TooSmall",
            _ => "other",
        };
        assert_eq!(got, kind, "{e}");
        println!("{}", one_line(e));
    }
    let e = Leace::fit(x.view(), &y, 2).unwrap();
    println!("{}", one_line(e.apply(Array2::zeros((2, 4)).view()).unwrap_err()));
    println!("{}", one_line(e.apply_row(Array1::zeros(2).view()).unwrap_err()));
    println!("{}", one_line(project_out(x.view(), Array1::zeros(4).view()).unwrap_err()));
    println!("{}", one_line(project_out(x.view(), ndarray::array![1.0, f64::NAN, 0.0].view()).unwrap_err()));
    // Erasing a zero direction is exactly the identity.
    assert_eq!(project_out(x.view(), Array1::zeros(3).view()).unwrap(), x);
    for (r, kind) in [
        (mean_difference(x.view(), &y, 2, 2), "Params"),
        (mean_difference(x.view(), &y, 3, 2), "TooSmall"),
        (mean_difference(x.view(), &[0; 6], 2, 0), "TooSmall"),
        (mean_difference(x.view(), &y[..4], 2, 0), "Input"),
    ] {
        let e = r.unwrap_err();
        assert!(
            matches!(
                (&e, kind),
                (AnalysisError::Params(_), "Params")
                    | (AnalysisError::TooSmall(_), "TooSmall")
                    | (AnalysisError::Input(_), "Input")
            ),
            "{e}"
        );
        println!("{}", one_line(e));
    }
}
