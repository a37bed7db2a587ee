//! Every figure is written as PNG and SVG, decodes, is not blank, and the
//! report references only files that exist.

use std::path::Path;

use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::rng::Rng;
use mmprobe_analysis::sweep::{self, ControlBy, GeometryParams, GroupBy, ProbeSweep};
use mmprobe_analysis::{Filters, ProbeParams, tables};
use mmprobe_store::part::write_part;
use mmprobe_store::store::write_parquet;
use mmprobe_store::{PartRows, Partition, Selector, Site, Tower};
use polars::prelude::*;

const N: usize = 90;

/// A store with 4 vision layers, embeds of both towers and two concepts;
/// with `red_only`, vision layer 3 holds only the red samples (one colour class there).
fn make_store(root: &Path, red_only: bool) {
    let mut rng = Rng::new(2);
    let colour: Vec<usize> = (0..N).map(|i| i % 3).collect();
    let shape: Vec<usize> = (0..N).map(|i| (i / 3) % 2).collect();
    let mut write = |p: Partition, d: usize, s: f32| {
        let mut data = Vec::new();
        for i in 0..N {
            for j in 0..d {
                let noise = (rng.below(1000) as f32 / 1000.0 - 0.5) * 2.0;
                let signal = if j == colour[i] { s } else { 0.0 } + if j == 3 + shape[i] { s * 0.5 } else { 0.0 };
                data.push(noise + signal);
            }
        }
        let keep: Vec<usize> =
            (0..N).filter(|&i| !(red_only && p.layer == 3 && p.site == Site::Resid) || colour[i] == 0).collect();
        let data: Vec<f32> = keep.iter().flat_map(|&i| data[i * d..(i + 1) * d].to_vec()).collect();
        let rows =
            PartRows { width: d, sample: keep.iter().map(|&i| i as u32).collect(), pos: vec![-1; keep.len()], data };
        write_part(p.part(root, 0, 0), &rows).unwrap();
    };
    for l in 0..4 {
        write(Partition { tower: Tower::Vision, site: Site::Resid, layer: l, selector: Selector::Cls }, 10, l as f32);
    }
    for t in [Tower::Vision, Tower::Text] {
        write(Partition { tower: t, site: Site::Embeds, layer: 0, selector: Selector::Pooled }, 6, 2.0);
    }
    let names = ["red", "green", "blue"];
    let mut samples = DataFrame::new(
        N,
        vec![
            Column::new("sample".into(), (0..N as u32).collect::<Vec<_>>()),
            Column::new("colour".into(), (0..N).map(|i| names[colour[i]]).collect::<Vec<_>>()),
            Column::new("shape".into(), (0..N).map(|i| ["square", "circle"][shape[i]]).collect::<Vec<_>>()),
        ],
    )
    .unwrap();
    write_parquet(&root.join("samples.parquet"), &mut samples).unwrap();
}

fn analyse(store_dir: &Path, out: &Path) -> Vec<tables::ProbeRow> {
    let store = mmprobe_store::Store::open(store_dir).unwrap();
    let concepts = vec!["colour".to_string(), "shape".to_string()];
    let p = ProbeParams { logistic: LogisticParams { c: Some(1.0), ..Default::default() }, ..Default::default() }
        .check()
        .unwrap();
    let sweep = ProbeSweep {
        concepts: concepts.clone(),
        filters: Filters::default(),
        params: p.clone(),
        control_by: ControlBy::Default,
        fold_column: None,
        group_by: GroupBy::Sample,
        probing: Default::default(),
    };
    let rows = sweep::probe_store(&store, &sweep, &|| {}).unwrap();
    tables::probes::write(out, &rows).unwrap();
    let found = sweep::directions_store(
        &store,
        &concepts,
        &Filters::default(),
        &[mmprobe_analysis::directions::Method::DiffMeans],
        &p.logistic,
        &GroupBy::Sample,
        &|| {},
    )
    .unwrap();
    tables::directions::write(out, &found.rows, &found.cosines).unwrap();
    let gp = GeometryParams { cka_rows: 100, silhouette_rows: 100, ..Default::default() }.check().unwrap();
    let (g, k, s) = sweep::geometry_store(&store, &Filters::default(), &gp, &p.logistic, &|| {}).unwrap();
    tables::geometry::write(out, &g, &k, &s).unwrap();
    rows
}

#[test]
fn report_writes_every_figure_and_links_only_existing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, res, out) = (tmp.path().join("store"), tmp.path().join("results"), tmp.path().join("report"));
    std::fs::create_dir_all(&res).unwrap();
    make_store(&store, false);
    analyse(&store, &res);
    let s = mmprobe_plot::write_report(&store, &res, &out).unwrap();
    let names: Vec<String> = s.figures.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in [
        "layers_colour.png",
        "layers_shape.svg",
        "pca_colour.png",
        "lda_shape.png",
        "hist_colour.png",
        "layers_pca_colour.png",
        "cka.png",
        "direction_cosines.png",
        "modality_gap.png",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    for f in &s.figures {
        let bytes = std::fs::read(f).unwrap();
        if f.extension().unwrap() == "svg" {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains("<svg") && text.contains("<text"), "{} has no text", f.display());
            continue;
        }
        let img = image::load_from_memory(&bytes).unwrap().to_luma8();
        let px: Vec<f64> = img.pixels().map(|p| p.0[0] as f64).collect();
        let mean = px.iter().sum::<f64>() / px.len() as f64;
        let var = px.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / px.len() as f64;
        assert!(var > 100.0, "{} looks blank (variance {var:.1})", f.display());
        assert!(img.width() >= 500 && img.height() >= 400);
    }
    let html = std::fs::read_to_string(&s.html).unwrap();
    assert!(html.contains("Best layer per concept and tower") && html.contains("modality_gap"));
    let mut refs = 0;
    for part in html.split("src=\"").skip(1).chain(html.split("href=\"").skip(1)) {
        let target = &part[..part.find('"').unwrap()];
        assert!(!target.starts_with("http"), "network reference {target}");
        assert!(out.join(target).exists(), "report.html references missing {target}");
        refs += 1;
    }
    assert!(refs >= 2 * 9, "{refs} references");
    // To look at the figures: MMPROBE_KEEP_REPORT=/some/dir cargo test -p mmprobe-plot
    if let Ok(keep) = std::env::var("MMPROBE_KEEP_REPORT") {
        let _ = std::fs::remove_dir_all(&keep);
        std::fs::rename(tmp.path(), &keep).unwrap();
    }
}

#[test]
fn a_concept_with_one_class_on_some_partitions_is_skipped_there_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, res, out) = (tmp.path().join("store"), tmp.path().join("results"), tmp.path().join("report"));
    std::fs::create_dir_all(&res).unwrap();
    make_store(&store, true);
    let rows = analyse(&store, &res);
    let layer3 = |c: &str| rows.iter().find(|r| r.concept == c && r.partition.layer == 3).unwrap();
    let skipped = layer3("colour").skipped.clone().unwrap_or_default();
    assert!(skipped.contains("needs at least 2 classes, found 1 (red)"), "{skipped}");
    assert!(layer3("shape").skipped.is_none() && layer3("shape").accuracy.is_some());
    let s = mmprobe_plot::write_report(&store, &res, &out).unwrap();
    assert!(s.figures.iter().any(|f| f.ends_with("layers_pca_colour.png")));
}
