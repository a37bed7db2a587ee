//! mmprobe-analysis against scikit-learn and numpy on fixed data
//! (scripts/fixtures/make_analysis.py).

use std::path::PathBuf;

use mmprobe_analysis::cka::cka;
use mmprobe_analysis::directions;
use mmprobe_analysis::folds::Groups;
use mmprobe_analysis::geometry::{cone, modality_gap, recall_at, silhouette};
use mmprobe_analysis::leace::Leace;
use mmprobe_analysis::linalg::shrunk_within_covariance;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::metrics::{accuracy, argmax_rows, auroc, balanced_accuracy, macro_f1};
use mmprobe_analysis::probe::cross_val_proba;
use ndarray::{Array1, Array2, Axis, s};
use safetensors::{Dtype, SafeTensors};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/analysis")
}

struct Ref {
    bytes: Vec<u8>,
    json: serde_json::Value,
}

impl Ref {
    fn load() -> Ref {
        Ref {
            bytes: std::fs::read(dir().join("reference.safetensors")).unwrap(),
            json: serde_json::from_slice(&std::fs::read(dir().join("reference.json")).unwrap()).unwrap(),
        }
    }
    fn raw(&self, name: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        (t.shape().to_vec(), t.dtype(), t.data().to_vec())
    }
    fn f64s(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let (shape, dt, data) = self.raw(name);
        assert_eq!(dt, Dtype::F64, "{name}");
        (shape, data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect())
    }
    fn matrix(&self, name: &str) -> Array2<f64> {
        let (shape, v) = self.f64s(name);
        Array2::from_shape_vec((shape[0], shape[1]), v).unwrap()
    }
    fn vector(&self, name: &str) -> Array1<f64> {
        Array1::from(self.f64s(name).1)
    }
    fn labels(&self, name: &str) -> Vec<usize> {
        let (_, dt, data) = self.raw(name);
        assert_eq!(dt, Dtype::I64);
        data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize).collect()
    }
    fn scalar(&self, group: &str, key: &str) -> f64 {
        self.json[group][key].as_f64().unwrap_or_else(|| panic!("{group}.{key}"))
    }
}

fn max_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn cross_validated_logistic_matches_sklearn_with_the_same_c_and_folds() {
    let r = Ref::load();
    for name in ["multi", "binary"] {
        let x = r.matrix(&format!("{name}.x"));
        let y = r.labels(&format!("{name}.y"));
        let folds = r.labels(&format!("{name}.folds"));
        let k = y.iter().max().unwrap() + 1;
        let c = r.scalar(name, "C");
        let p =
            LogisticParams { c: Some(c), max_iterations: 1000, tolerance: 1e-6, ..Default::default() }.check().unwrap();
        let (oof, _) = cross_val_proba(x.view(), &y, &Groups::singletons(y.len()), k, &folds, 5, &p, None).unwrap();
        let acc = accuracy(&y, &argmax_rows(oof.view()));
        let want = r.scalar(name, "accuracy");
        assert!((acc - want).abs() <= 0.01, "{name}: accuracy {acc} vs sklearn {want}");
        let sk = r.matrix(&format!("{name}.oof"));
        let d = max_diff(&oof, &sk);
        assert!(d < 0.05, "{name}: out-of-fold probabilities differ by {d}");
        eprintln!("{name}: accuracy {acc:.4} (sklearn {want:.4}), max |p - p_sklearn| {d:.2e}");
    }
}

#[test]
fn metrics_match_sklearn_on_its_own_predictions() {
    let r = Ref::load();
    for name in ["multi", "binary"] {
        let y = r.labels(&format!("{name}.y"));
        let oof = r.matrix(&format!("{name}.oof"));
        let k = oof.ncols();
        let pred = argmax_rows(oof.view());
        for (metric, got) in [
            ("accuracy", accuracy(&y, &pred)),
            ("balanced_accuracy", balanced_accuracy(&y, &pred, k)),
            ("macro_f1", macro_f1(&y, &pred, k)),
            ("auroc", auroc(&y, oof.view())),
        ] {
            let want = r.scalar(name, metric);
            assert!((got - want).abs() < 1e-9, "{name} {metric}: {got} vs {want}");
        }
    }
}

#[test]
fn lda_direction_and_shrinkage_match_numpy() {
    let r = Ref::load();
    let x = r.matrix("multi.x");
    let y = r.labels("multi.y");
    let (_, a) = shrunk_within_covariance(x.view(), &y, 4);
    assert!((a - r.scalar("multi", "ledoit_wolf")).abs() < 1e-10, "shrinkage {a}");
    let dirs = directions::lda(x.view(), &y, 4).unwrap();
    let want = r.vector("multi.lda_class2");
    let got = &dirs[2].unit;
    let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(d < 1e-4, "LDA direction differs by {d}");
}

#[test]
fn leace_matches_numpy() {
    let r = Ref::load();
    for (name, k) in [("multi", 4), ("binary", 2)] {
        let x = r.matrix(&format!("{name}.x"));
        let y = r.labels(&format!("{name}.y"));
        let erased = Leace::fit(x.view(), &y, k).unwrap().apply(x.view()).unwrap();
        let d = max_diff(&erased, &r.matrix(&format!("{name}.leace")));
        assert!(d < 1e-4, "{name}: LEACE output differs by {d}");
    }
}

#[test]
fn geometry_and_cka_match_numpy() {
    let r = Ref::load();
    let (img, txt) = (r.matrix("pair.image"), r.matrix("pair.text"));
    let close = |got: f64, key: &str| {
        let want = r.scalar("pair", key);
        assert!((got - want).abs() < 1e-4, "{key}: {got} vs {want}");
    };
    close(modality_gap(img.view(), txt.view()), "modality_gap");
    close(cone(img.view()), "cone_image");
    close(cone(txt.view()), "cone_text");
    let i2t = recall_at(img.view(), txt.view(), &[1, 5]);
    let t2i = recall_at(txt.view(), img.view(), &[1, 5]);
    close(i2t[0], "i2t_r1");
    close(i2t[1], "i2t_r5");
    close(t2i[0], "t2i_r1");
    close(t2i[1], "t2i_r5");
    close(cka(img.view(), txt.view()), "cka_image_text");
    let x = r.matrix("multi.x");
    let wide = x.slice(s![.., 300..]).dot(&r.matrix("cka.proj"));
    close(cka(x.slice(s![.., ..300]), wide.view()), "cka_multi_wide");
    let y = r.labels("multi.y");
    let sub = x.select(Axis(0), &(0..300).collect::<Vec<_>>());
    let want = r.scalar("multi", "silhouette");
    let got = silhouette(sub.view(), &y[..300], 4).unwrap();
    assert!((got - want).abs() < 1e-6, "silhouette {got} vs {want}");
}
