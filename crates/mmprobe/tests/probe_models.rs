//! `mmprobe probe` with the non-linear, MDL and sparse probes, end to end on
//! a store written by hand (an XOR concept no linear probe reads).

use std::path::Path;
use std::process::Command;

use mmprobe_store::part::write_part;
use mmprobe_store::store::{read_parquet, write_parquet};
use mmprobe_store::{PartRows, Partition, Selector, Site, Tower};
use polars::prelude::*;

/// 400 samples; vision resid layer 1 holds (x0, x1, 4 noise features) with
/// `xor` = sign(x0) XOR sign(x1), 100 samples per quadrant.
fn xor_store(root: &Path) {
    let mut state = 17u64;
    let mut uniform = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let n = 400;
    let mut data = Vec::new();
    let mut xor = Vec::new();
    for i in 0..n {
        let (a, b) = (if i % 2 == 0 { 1.0 } else { -1.0 }, if (i / 2) % 2 == 0 { 1.0 } else { -1.0 });
        data.extend([a * (0.1 + uniform().abs()), b * (0.1 + uniform().abs())].map(|v: f64| v as f32));
        data.extend((0..4).map(|_| uniform() as f32));
        xor.push(if (a > 0.0) != (b > 0.0) { "odd" } else { "even" });
    }
    let p = Partition { tower: Tower::Vision, site: Site::Resid, layer: 1, selector: Selector::Cls };
    write_part(p.part(root, 0, 0), &PartRows { width: 6, sample: (0..n as u32).collect(), pos: vec![-1; n], data })
        .unwrap();
    let mut samples = DataFrame::new(
        n,
        vec![Column::new("sample".into(), (0..n as u32).collect::<Vec<_>>()), Column::new("xor".into(), xor)],
    )
    .unwrap();
    write_parquet(&root.join("samples.parquet"), &mut samples).unwrap();
}

fn probe(store: &Path, out: &Path, extra: &[&str]) -> DataFrame {
    let run = Command::new(env!("CARGO_BIN_EXE_mmprobe"))
        .args(["probe", "--store", store.to_str().unwrap(), "--concept", "xor", "--out", out.to_str().unwrap()])
        .args(extra)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(run.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&run.stderr));
    read_parquet(&out.join("probes.parquet")).unwrap()
}

fn first_f64(df: &DataFrame, col: &str) -> f64 {
    df.column(col).unwrap().cast(&DataType::Float64).unwrap().f64().unwrap().get(0).unwrap()
}

#[test]
fn probe_model_svm_reads_what_the_linear_probe_cannot_and_both_share_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    xor_store(tmp.path());
    let out = tmp.path().join("results");
    probe(tmp.path(), &out, &[]);
    // A second model into the same folder keeps the first one's rows.
    let both = probe(tmp.path(), &out, &["--model", "svm"]);
    assert_eq!(both.height(), 2, "{both}");
    let probe_col: Vec<&str> = both.column("probe").unwrap().str().unwrap().iter().map(|v| v.unwrap_or("")).collect();
    let at = |kind: &str, col: &str| {
        let i = probe_col.iter().position(|p| *p == kind).unwrap_or_else(|| panic!("no {kind} row"));
        both.column(col).unwrap().cast(&DataType::Float64).unwrap().f64().unwrap().get(i).unwrap()
    };
    assert!(at("logistic", "accuracy_ci_low") <= 0.5, "logistic on XOR: {}", at("logistic", "accuracy"));
    assert!(at("svm", "accuracy_ci_low") > 0.8, "svm on XOR: {}", at("svm", "accuracy"));
    // Running the SVM again replaces its own row, never duplicates it.
    assert_eq!(probe(tmp.path(), &out, &["--model", "svm"]).height(), 2);
}

#[test]
fn mdl_and_sparse_probes_run_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    xor_store(tmp.path());
    let mdl = probe(tmp.path(), &tmp.path().join("mdl"), &["--method", "mdl", "--control"]);
    assert_eq!(mdl.column("method").unwrap().str().unwrap().get(0), Some("mdl"));
    assert!(first_f64(&mdl, "codelength") > 0.0 && first_f64(&mdl, "uniform_codelength") == 400.0);
    let sparse = probe(tmp.path(), &tmp.path().join("sparse"), &["--sparse", "1,2", "--model", "knn"]);
    assert_eq!(sparse.height(), 2);
    let k2 = sparse.column("features").unwrap().list().unwrap().get_as_series(1).unwrap();
    let mut ids: Vec<u32> = k2.u32().unwrap().into_no_null_iter().collect();
    ids.sort_unstable();
    // Each feature alone carries nothing about an XOR, so the filter may pick
    // any two; what must hold is that the probe on them is a k-NN and runs.
    assert_eq!(ids.len(), ids.iter().collect::<std::collections::BTreeSet<_>>().len());
    assert_eq!(sparse.column("probe").unwrap().str().unwrap().get(1), Some("knn"));
}
