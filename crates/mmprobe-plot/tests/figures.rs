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

/// How a test store differs from the plain one.
#[derive(Default, Clone, Copy)]
struct Opts {
    /// Vision layer 3 holds only the red samples (one colour class there).
    red_only: bool,
    /// Vision layer 0 holds one vector for every sample.
    constant_layer0: bool,
    /// No text embeds: nothing paired, no modality gap.
    no_text_embeds: bool,
}

/// A store with 4 vision layers, embeds of both towers and three concepts
/// (colour, shape and `noise`, a label unrelated to the states).
fn make_store(root: &Path, o: Opts) {
    let red_only = o.red_only;
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
        let mut data: Vec<f32> = keep.iter().flat_map(|&i| data[i * d..(i + 1) * d].to_vec()).collect();
        if o.constant_layer0 && p.layer == 0 && p.site == Site::Resid {
            data = (0..keep.len() * d).map(|k| (k % d) as f32 * 0.25).collect();
        }
        let rows =
            PartRows { width: d, sample: keep.iter().map(|&i| i as u32).collect(), pos: vec![-1; keep.len()], data };
        write_part(p.part(root, 0, 0), &rows).unwrap();
    };
    for l in 0..4 {
        write(Partition { tower: Tower::Vision, site: Site::Resid, layer: l, selector: Selector::Cls }, 10, l as f32);
    }
    let towers: &[Tower] = if o.no_text_embeds { &[Tower::Vision] } else { &[Tower::Vision, Tower::Text] };
    for &t in towers {
        write(Partition { tower: t, site: Site::Embeds, layer: 0, selector: Selector::Pooled }, 6, 2.0);
    }
    let names = ["red", "green", "blue"];
    let mut samples = DataFrame::new(
        N,
        vec![
            Column::new("sample".into(), (0..N as u32).collect::<Vec<_>>()),
            Column::new("colour".into(), (0..N).map(|i| names[colour[i]]).collect::<Vec<_>>()),
            Column::new("shape".into(), (0..N).map(|i| ["square", "circle"][shape[i]]).collect::<Vec<_>>()),
            Column::new("noise".into(), (0..N).map(|i| ["up", "down", "left"][(i / 6) % 3]).collect::<Vec<_>>()),
        ],
    )
    .unwrap();
    write_parquet(&root.join("samples.parquet"), &mut samples).unwrap();
}

fn analyse(store_dir: &Path, out: &Path) -> Vec<tables::ProbeRow> {
    analyse_concepts(store_dir, out, &["colour", "shape"])
}

fn analyse_concepts(store_dir: &Path, out: &Path, concepts: &[&str]) -> Vec<tables::ProbeRow> {
    let store = mmprobe_store::Store::open(store_dir).unwrap();
    let concepts: Vec<String> = concepts.iter().map(|c| c.to_string()).collect();
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
    let (erased, _) = sweep::erase_store(&store, "colour", &Filters::default(), &p, &GroupBy::Sample, &|| {}).unwrap();
    tables::erase::write(out, &erased).unwrap();
    rows
}

fn svg(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join("figures").join(format!("{name}.svg"))).unwrap()
}

#[test]
fn report_writes_every_figure_and_links_only_existing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, res, out) = (tmp.path().join("store"), tmp.path().join("results"), tmp.path().join("report"));
    std::fs::create_dir_all(&res).unwrap();
    make_store(&store, Opts::default());
    analyse(&store, &res);
    let s = mmprobe_plot::write_report(&store, &res, &out).unwrap();
    let names: Vec<String> = s.figures.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in [
        "layers_colour.png",
        "layers_shape.svg",
        "pca_colour_vision.png",
        "pca_colour_text.png",
        "lda_shape_vision.png",
        "hist_colour_vision.png",
        "layers_pca_colour_vision.png",
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
        if let Some(id) = target.strip_prefix('#') {
            assert!(html.contains(&format!("id=\"{id}\"")), "report.html links to a missing section {target}");
            continue;
        }
        assert!(out.join(target).exists(), "report.html references missing {target}");
        refs += 1;
    }
    assert!(refs >= 2 * 9, "{refs} references");
    // Sections per concept and tower, listed in the table of contents.
    for id in ["c-colour", "c-colour-vision", "c-colour-text", "c-shape-vision", "geometry", "erase", "best"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no section {id}");
        assert!(html.contains(&format!("href=\"#{id}\"")), "{id} missing from the contents");
    }
    // A caption that says what to read under every figure, not just its file name.
    let figures = html.matches("<figure>").count();
    assert_eq!(figures, s.figures.len() / 2);
    for cap in html.split("<figcaption>").skip(1) {
        let text = &cap[..cap.find("<span class=\"files\">").unwrap()];
        assert!(text.split_whitespace().count() >= 20, "caption too thin: {text}");
    }
    // The best-layer table names chance; geometry counts are integers.
    assert!(html.contains("<th>chance</th>") && html.contains("0.333"));
    assert!(html.contains(&format!("<td class=\"num\">{N}</td>")), "pairs not an integer");
    assert!(!html.contains(&format!("{N}.000")));
    assert!(html.contains("Erasure (LEACE)") && html.contains("majority-class rate"));
    // Layer curves: a panel per tower, embeds as the last point, chance named.
    let curves = svg(&out, "layers_colour");
    for want in ["vision tower", "text tower", "embeds", "chance: majority 0.333", "resid cls: control task"] {
        assert!(curves.contains(want), "layers_colour.svg lacks {want:?}");
    }
    // Two classes have one discriminant: no "LD 2" axis; the LDA says what it was fit on.
    let lda2 = svg(&out, "lda_shape_vision");
    assert!(lda2.contains("PC 1 orthogonal to LD 1") && !lda2.contains("LD 2"));
    assert!(lda2.contains("in-sample"));
    assert!(svg(&out, "lda_colour_vision").contains("LD 2"));
    // Colour words are drawn in their colour: red points are red.
    let pca = svg(&out, "pca_colour_vision");
    assert!(pca.contains("#DC1E1E") || pca.contains("#dc1e1e"), "no red in pca_colour_vision.svg");
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
    make_store(&store, Opts { red_only: true, ..Opts::default() });
    let rows = analyse(&store, &res);
    let layer3 = |c: &str| rows.iter().find(|r| r.concept == c && r.partition.layer == 3).unwrap();
    let skipped = layer3("colour").skipped.clone().unwrap_or_default();
    assert!(skipped.contains("needs at least 2 classes, found 1 (red)"), "{skipped}");
    assert!(layer3("shape").skipped.is_none() && layer3("shape").accuracy.is_some());
    let s = mmprobe_plot::write_report(&store, &res, &out).unwrap();
    assert!(s.figures.iter().any(|f| f.ends_with("layers_pca_colour_vision.png")));
}

#[test]
fn constant_layers_are_marked_and_a_chance_level_best_layer_is_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, res, out) = (tmp.path().join("store"), tmp.path().join("results"), tmp.path().join("report"));
    std::fs::create_dir_all(&res).unwrap();
    make_store(&store, Opts { constant_layer0: true, no_text_embeds: true, ..Opts::default() });
    let rows = analyse_concepts(&store, &res, &["colour", "noise"]);
    let s = mmprobe_plot::write_report(&store, &res, &out).unwrap();
    // The constant layer is a marked panel and a marked CKA row, not a dot.
    assert!(svg(&out, "layers_pca_colour_vision").contains("constant states"));
    assert!(svg(&out, "cka").contains("vision resid 0 cls (constant)"));
    let html = std::fs::read_to_string(&s.html).unwrap();
    // The flag follows ProbeRow::covers_chance on the rows best_per_tower picks.
    let best = tables::probes::best_per_tower(&rows);
    let table = &html[html.find("id=\"best\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let trs: Vec<&str> = table.split("<tr>").skip(2).collect();
    assert_eq!(trs.len(), best.len());
    for (tr, b) in trs.iter().zip(&best) {
        assert!(tr.contains(&format!(">{}</a>", b.concept)));
        assert_eq!(tr.contains("not above chance"), b.covers_chance(), "{tr}");
    }
    let noise = best.iter().find(|b| b.concept == "noise").unwrap();
    assert!(noise.covers_chance(), "the noise label should not beat chance: {noise:?}");
    assert!(best.iter().any(|b| b.concept == "colour" && !b.covers_chance()));
    // A tower whose best partition is at chance says so under its pictures; one above chance does not.
    assert!(html.contains("even the vision tower's best partition for noise does not beat chance"));
    assert!(!html.contains("best partition for colour does not beat chance"));
    // No paired embeds: said in words, and no geometry table.
    let geometry = &html[html.find("id=\"geometry\"").unwrap()..];
    assert!(geometry.contains("No paired image and text embeds"));
    assert!(!geometry.contains("<table>"));
    assert!(!s.figures.iter().any(|f| f.ends_with("modality_gap.png")));
}

#[test]
fn mdl_and_sparse_rows_get_a_compression_curve_an_accuracy_against_k_and_a_neuron_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, res, out) = (tmp.path().join("store"), tmp.path().join("results"), tmp.path().join("report"));
    std::fs::create_dir_all(&res).unwrap();
    make_store(&store_dir, Opts::default());
    let cv = analyse(&store_dir, &res);
    let store = mmprobe_store::Store::open(&store_dir).unwrap();
    let p = ProbeParams { logistic: LogisticParams { c: Some(1.0), ..Default::default() }, ..Default::default() }
        .check()
        .unwrap();
    let mut rows = cv;
    for probing in [
        sweep::Probing::Mdl,
        sweep::Probing::Sparse { ks: vec![1, 2, 4], filter: mmprobe_analysis::sparse::Filter::Anova },
    ] {
        let s = ProbeSweep {
            concepts: vec!["colour".into()],
            filters: Filters::default(),
            params: p.clone(),
            control_by: ControlBy::Default,
            fold_column: None,
            group_by: GroupBy::Sample,
            probing,
        };
        rows = tables::probes::merge(rows, sweep::probe_store(&store, &s, &|| {}).unwrap()).0;
    }
    tables::probes::write(&res, &rows).unwrap();
    let s = mmprobe_plot::write_report(&store_dir, &res, &out).unwrap();
    for want in ["compression_colour.png", "sparse_colour.png"] {
        assert!(s.figures.iter().any(|f| f.ends_with(want)), "{want} missing");
    }
    let compression = svg(&out, "compression_colour");
    assert!(compression.contains("uniform code (1)") && compression.contains("vision tower"));
    assert!(svg(&out, "sparse_colour").contains("k (features kept"));
    let html = std::fs::read_to_string(&s.html).unwrap();
    assert!(html.contains("Top features of the sparse probes (colour)"), "no neuron table");
    // Colour lives on features 0..2: the best partition's k = 4 row names them first.
    let table = &html[html.find("Top features of the sparse probes").unwrap()..];
    let first_row = &table[table.find("<tr><td>").unwrap()..];
    let cells: Vec<&str> = first_row.split("<td>").collect();
    let features = cells[4];
    for f in ["0 (", "1 (", "2 ("] {
        assert!(features.contains(f), "feature {f} missing from {features}");
    }
}
