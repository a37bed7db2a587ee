//! Sweeps over a store written by hand (as another tool would): result rows,
//! nulls, bad concepts and non-finite activations.

use std::path::Path;

use mmprobe_analysis::directions::Method;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::rng::Rng;
use mmprobe_analysis::sweep::{self, ControlBy, GeometryParams, GroupBy, ProbeSweep};
use mmprobe_analysis::tables::{self, CosineKind, ProbeKind};
use mmprobe_analysis::{Filters, ProbeParams};
use mmprobe_store::part::write_part;
use mmprobe_store::store::write_parquet;
use mmprobe_store::{PartRows, Partition, Selector, Site, Store, Tower};
use polars::prelude::*;

const N: usize = 120;

fn part(tower: Tower, site: Site, layer: usize, selector: Selector) -> Partition {
    Partition { tower, site, layer, selector }
}

/// Layer L carries the colour concept with strength L; embeds of both towers
/// share it. Returns the vision and text embeds as written (row = sample).
fn make_store(root: &Path, poison: bool) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut written: Vec<(Partition, Vec<f32>)> = Vec::new();
    let mut rng = Rng::new(1);
    let colour: Vec<usize> = (0..N).map(|i| i % 3).collect();
    let mut write = |p: Partition, d: usize, strength: f32| {
        let mut data = Vec::with_capacity(N * d);
        for &c in &colour {
            for j in 0..d {
                let noise = (rng.below(1000) as f32 / 1000.0 - 0.5) * 2.0;
                data.push(noise + if j == c { strength } else { 0.0 });
            }
        }
        if poison && p.layer == 2 {
            data[7] = f32::NAN;
        }
        write_part(
            p.part(root, 0, 0),
            &PartRows { width: d, sample: (0..N as u32).collect(), pos: vec![-1; N], data: data.clone() },
        )
        .unwrap();
        written.push((p, data));
    };
    for l in 0..3 {
        write(part(Tower::Vision, Site::Resid, l, Selector::Cls), 8, l as f32 * 1.5);
    }
    write(part(Tower::Vision, Site::Embeds, 0, Selector::Pooled), 6, 3.0);
    write(part(Tower::Text, Site::Embeds, 0, Selector::Pooled), 6, 3.0);
    let names = ["red", "green", "blue"];
    let mut samples = DataFrame::new(
        N,
        vec![
            Column::new("sample".into(), (0..N as u32).collect::<Vec<_>>()),
            Column::new("text".into(), (0..N).map(|i| format!("a {} thing", names[colour[i]])).collect::<Vec<_>>()),
            Column::new(
                "colour".into(),
                (0..N).map(|i| if i == 5 { None } else { Some(names[colour[i]]) }).collect::<Vec<_>>(),
            ),
            Column::new("one".into(), vec!["same"; N]),
            Column::new("rare".into(), (0..N).map(|i| if i < 2 { "x" } else { "y" }).collect::<Vec<_>>()),
            Column::new(
                "size".into(),
                (0..N).map(|i| colour[i] as f64 * 2.0 + (i % 7) as f64 * 0.01).collect::<Vec<_>>(),
            ),
        ],
    )
    .unwrap();
    write_parquet(&root.join("samples.parquet"), &mut samples).unwrap();
    let rows = |t: Tower| -> Vec<Vec<f32>> {
        let data = &written.iter().find(|(p, _)| p.tower == t && p.site == Site::Embeds).unwrap().1;
        data.chunks(6).map(|c| c.to_vec()).collect()
    };
    (rows(Tower::Vision), rows(Tower::Text))
}

fn sweep_of(concepts: &[&str], filters: Filters, control_by: ControlBy) -> ProbeSweep {
    ProbeSweep {
        concepts: concepts.iter().map(|c| c.to_string()).collect(),
        filters,
        params: params(),
        control_by,
        fold_column: None,
        group_by: GroupBy::Sample,
        probing: Default::default(),
    }
}

fn params() -> mmprobe_analysis::CheckedProbe {
    ProbeParams {
        bootstrap: 100,
        logistic: LogisticParams { c: Some(1.0), ..Default::default() },
        ..Default::default()
    }
    .check()
    .unwrap()
}

#[test]
fn probe_sweep_rows_statistics_and_nulls() {
    let tmp = tempfile::tempdir().unwrap();
    make_store(tmp.path(), false);
    let store = Store::open(tmp.path()).unwrap();
    assert!(store.manifest.is_none(), "a store without manifest.json opens");
    let s = sweep_of(&["colour", "size"], Filters::default(), ControlBy::Default);
    let rows = sweep::probe_store(&store, &s, &|| {}).unwrap();
    assert_eq!(rows.len(), 2 * 5);
    let by_layer = |l: usize| {
        rows.iter()
            .find(|r| r.concept == "colour" && r.partition == part(Tower::Vision, Site::Resid, l, Selector::Cls))
            .unwrap()
    };
    let (l0, l2) = (by_layer(0), by_layer(2));
    assert_eq!((l0.n, l0.dropped_null, l0.n_classes), (N - 1, 1, 3));
    assert!(l0.accuracy.unwrap() < 0.6 && l2.accuracy.unwrap() > 0.95, "{:?} {:?}", l0.accuracy, l2.accuracy);
    let (lo, hi) = (l2.accuracy_ci_low.unwrap(), l2.accuracy_ci_high.unwrap());
    assert!(lo <= l2.accuracy.unwrap() && l2.accuracy.unwrap() <= hi);
    // Texts repeat ("a red thing"), so the control task groups by text: one
    // random label per colour word, which a probe can still learn: low selectivity.
    assert_eq!(l2.control_by, "text");
    assert!(l2.selectivity.unwrap() < 0.7, "{:?}", l2.selectivity);
    let size =
        rows.iter().find(|r| r.concept == "size" && r.partition.layer == 2 && r.partition.site == Site::Resid).unwrap();
    assert_eq!(size.probe, ProbeKind::Ridge);
    assert!(size.r2.unwrap() > 0.8, "{:?}", size.r2);
    let out = tmp.path().join("results");
    std::fs::create_dir_all(&out).unwrap();
    tables::probes::write(&out, &rows).unwrap();
    assert_eq!(tables::probes::read(&out).unwrap(), rows, "probes.parquet reads back as written");
    let df = mmprobe_store::store::read_parquet(&out.join("probes.parquet")).unwrap();
    for c in [
        "concept",
        "tower",
        "site",
        "layer",
        "selector",
        "probe",
        "n",
        "n_classes",
        "accuracy",
        "accuracy_ci_low",
        "accuracy_ci_high",
        "balanced_accuracy",
        "macro_f1",
        "auroc",
        "control_accuracy",
        "selectivity",
        "p_value",
        "p_value_bh",
        "p_value_holm",
        "group_by",
        "interval",
    ] {
        assert!(df.column(c).is_ok(), "probes.parquet lacks {c}");
    }
    assert!(out.join("probes.csv").exists());
}

#[test]
fn bad_concepts_and_activations_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    make_store(tmp.path(), true);
    let store = Store::open(tmp.path()).unwrap();
    let run = |c: &str, f: &Filters| {
        sweep::probe_store(&store, &sweep_of(&[c], f.clone(), ControlBy::Off), &|| {}).unwrap_err().to_string()
    };
    let layer1 = Filters { layers: Some(vec![1]), sites: Some(vec![Site::Resid]), ..Default::default() };
    let e = run("nope", &layer1);
    assert!(e.contains("concept 'nope'") && e.contains("no such column"), "{e}");
    let e = run("one", &layer1);
    assert!(e.contains("needs at least 2 classes, found 1 (same)"), "{e}");
    let e = run("rare", &layer1);
    assert!(e.contains("class 'x' has 2 rows, fewer than the 5 folds"), "{e}");
    let e = run("colour", &Filters { layers: Some(vec![2]), sites: Some(vec![Site::Resid]), ..Default::default() });
    assert!(e.contains("tower=vision/site=resid/layer=2/selector=cls") && e.contains("non-finite"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn directions_geometry_and_erasure_over_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (vision, text) = make_store(tmp.path(), false);
    let store = Store::open(tmp.path()).unwrap();
    let logistic = LogisticParams { c: Some(1.0), ..Default::default() }.check().unwrap();
    let concepts = vec!["colour".to_string()];
    let found = sweep::directions_store(
        &store,
        &concepts,
        &Filters::default(),
        &[Method::DiffMeans, Method::Lda, Method::Probe],
        &logistic,
        &GroupBy::Sample,
        &|| {},
    )
    .unwrap();
    assert!(found.skipped.is_empty());
    let (dirs, cos) = (found.rows, found.cosines);
    assert_eq!(dirs.len(), 5 * 3 * 3, "5 partitions x 3 methods x 3 classes");
    let red =
        dirs.iter().find(|d| d.class == "red" && d.method == Method::DiffMeans && d.partition.layer == 2).unwrap();
    // red (code 0) sits on feature 0, green and blue on 1 and 2: red minus the
    // rest is (3, -1.5, -1.5, 0...) up to noise, 0.82 of it on feature 0.
    assert!(red.direction[0] > 0.75 && red.direction[1] < -0.3 && red.direction[2] < -0.3, "{:?}", red.direction);
    assert!(
        cos.iter().any(|c| c.kind == CosineKind::Towers && c.cosine > 0.9),
        "embeds directions agree across towers"
    );
    assert!(cos.iter().any(|c| c.kind == CosineKind::Layers));
    let out = tmp.path().join("results");
    std::fs::create_dir_all(&out).unwrap();
    tables::directions::write(&out, &dirs, &cos).unwrap();
    assert_eq!(tables::directions::read(&out).unwrap(), dirs);
    assert_eq!(tables::directions::read_cosines(&out).unwrap(), cos);

    let gp =
        GeometryParams { silhouette_rows: 1000, concepts: concepts.clone(), ..Default::default() }.check().unwrap();
    let (report, cka, sep) = sweep::geometry_store(&store, &Filters::default(), &gp, &logistic, &|| {}).unwrap();
    assert_eq!(report.pairs, N);
    // The gap by hand: |mean of unit image rows - mean of unit text rows|.
    let unit_mean = |rows: &[Vec<f32>]| -> Vec<f64> {
        let mut m = vec![0.0; 6];
        for r in rows {
            let n = r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            for (a, v) in m.iter_mut().zip(r) {
                *a += f64::from(*v) / n / rows.len() as f64;
            }
        }
        m
    };
    let (mi, mt) = (unit_mean(&vision), unit_mean(&text));
    let gap = mi.iter().zip(&mt).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    assert!((report.modality_gap.unwrap() - gap).abs() < 1e-9, "{:?} vs {gap}", report.modality_gap);
    // Image-to-text recall@1 by hand: the nearest text by cosine is the image's own.
    let unit = |r: &[f32]| -> Vec<f64> {
        let n = r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        r.iter().map(|v| f64::from(*v) / n).collect()
    };
    let (vi, vt): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
        (vision.iter().map(|r| unit(r)).collect(), text.iter().map(|r| unit(r)).collect());
    let hits = (0..N)
        .filter(|&i| {
            let cos = |j: usize| vi[i].iter().zip(&vt[j]).map(|(a, b)| a * b).sum::<f64>();
            (0..N).max_by(|&a, &b| cos(a).total_cmp(&cos(b))) == Some(i)
        })
        .count();
    assert!((report.retrieval_i2t_r1.unwrap() - hits as f64 / N as f64).abs() < 1e-12, "{:?}", report);
    assert!(report.transfer["colour"]["text_to_image"] > 0.9, "{:?}", report.transfer);
    assert_eq!(cka.len(), 5 * 6 / 2);
    assert!(cka.iter().filter(|r| r.a == r.b).all(|r| (r.cka - 1.0).abs() < 1e-9));
    let sep2 = sep.iter().find(|r| r.partition.layer == 2 && r.partition.site == Site::Resid).unwrap();
    let sep0 = sep.iter().find(|r| r.partition.layer == 0 && r.partition.site == Site::Resid).unwrap();
    assert!(sep2.fisher_ratio > sep0.fisher_ratio && sep2.silhouette > sep0.silhouette);

    let p = params();
    let (erase, skipped) = sweep::erase_store(
        &store,
        "colour",
        &Filters { layers: Some(vec![2]), sites: Some(vec![Site::Resid]), ..Default::default() },
        &p,
        &GroupBy::Sample,
        &|| {},
    )
    .unwrap();
    assert!(skipped.is_empty());
    assert_eq!(erase.len(), 1);
    assert!(
        erase[0].accuracy_before > 0.95 && (erase[0].accuracy_after - erase[0].chance).abs() < 0.15,
        "{:?}",
        erase[0]
    );
    assert_eq!(erase[0].rank, 2);
}

#[test]
fn mdl_and_sparse_rows_go_through_the_sweep_and_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    make_store(tmp.path(), false);
    let store = Store::open(tmp.path()).unwrap();
    let layer2 = Filters { layers: Some(vec![2]), sites: Some(vec![Site::Resid]), ..Default::default() };
    let mut s = sweep_of(&["colour", "size"], layer2, ControlBy::Column("text".into()));
    s.probing = sweep::Probing::Mdl;
    let mdl = sweep::probe_store(&store, &s, &|| {}).unwrap();
    let colour = mdl.iter().find(|r| r.concept == "colour").unwrap();
    assert_eq!(colour.method, tables::ProbeMethod::Mdl);
    let (c, u) = (colour.codelength.unwrap(), colour.uniform_codelength.unwrap());
    assert!((u - 119.0 * 3f64.log2()).abs() < 1e-9, "uniform code of 119 rows, 3 classes: {u}");
    assert!(colour.compression.unwrap() > 1.5 && (colour.compression.unwrap() - u / c).abs() < 1e-12);
    assert!(colour.control_compression.is_some() && colour.accuracy.is_none());
    let size = mdl.iter().find(|r| r.concept == "size").unwrap();
    assert!(size.skipped.as_deref().unwrap().contains("MDL probes classes"), "{size:?}");

    s.probing = sweep::Probing::Sparse { ks: vec![1, 3], filter: mmprobe_analysis::sparse::Filter::Anova };
    s.concepts = vec!["colour".into()];
    let sparse = sweep::probe_store(&store, &s, &|| {}).unwrap();
    assert_eq!(sparse.iter().map(|r| r.k).collect::<Vec<_>>(), vec![Some(1), Some(3)]);
    let k3 = &sparse[1];
    let mut top = k3.features[..3].to_vec();
    top.sort_unstable();
    assert_eq!(top, vec![0, 1, 2], "the three colour features: {:?}", k3.features);
    assert!(k3.accuracy.unwrap() > 0.95);

    let out = tmp.path().join("results");
    std::fs::create_dir_all(&out).unwrap();
    let all: Vec<_> = mdl.into_iter().chain(sparse).collect();
    tables::probes::write(&out, &all).unwrap();
    assert_eq!(tables::probes::read(&out).unwrap(), all, "lists and MDL columns read back");
    let csv = std::fs::read_to_string(out.join("probes.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with("k,features,feature_counts"), "{}", csv.lines().next().unwrap());
}
