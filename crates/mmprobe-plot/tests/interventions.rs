//! The report's Interventions section: its three kinds of figure and its
//! table when interventions.parquet is there, nothing when it is not.

use std::path::Path;

use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::rng::Rng;
use mmprobe_analysis::sweep::{self, ControlBy, GroupBy, ProbeSweep};
use mmprobe_analysis::tables::{self, InterventionRow};
use mmprobe_analysis::{Filters, ProbeParams};
use mmprobe_store::part::write_part;
use mmprobe_store::store::write_parquet;
use mmprobe_store::{PartRows, Partition, Selector, Site, Tower};
use polars::prelude::*;

const N: usize = 60;
const MEASURED: [&str; 3] = ["colour", "shape", "noise"];

/// Four vision CLS layers where colour grows readable with depth, and the
/// probes of colour and shape on them (probes.parquet): the curves the
/// effects sit over.
fn store_and_probes(store: &Path, results: &Path) {
    let mut rng = Rng::new(5);
    let colour: Vec<usize> = (0..N).map(|i| i % 3).collect();
    for layer in 0..4 {
        let d = 6;
        let data = (0..N)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| (rng.below(1000) as f32 / 500.0 - 1.0) + if j == colour[i] { layer as f32 } else { 0.0 })
            .collect();
        let p = Partition { tower: Tower::Vision, site: Site::Resid, layer, selector: Selector::Cls };
        let rows = PartRows { width: d, sample: (0..N as u32).collect(), pos: vec![-1; N], data };
        write_part(p.part(store, 0, 0), &rows).unwrap();
    }
    let mut samples = DataFrame::new(
        N,
        vec![
            Column::new("sample".into(), (0..N as u32).collect::<Vec<_>>()),
            Column::new("colour".into(), (0..N).map(|i| ["red", "green", "blue"][colour[i]]).collect::<Vec<_>>()),
            Column::new("shape".into(), (0..N).map(|i| ["square", "circle"][(i / 3) % 2]).collect::<Vec<_>>()),
        ],
    )
    .unwrap();
    write_parquet(&store.join("samples.parquet"), &mut samples).unwrap();
    let params = ProbeParams { logistic: LogisticParams { c: Some(1.0), ..Default::default() }, ..Default::default() }
        .check()
        .unwrap();
    let s = ProbeSweep {
        concepts: vec!["colour".into(), "shape".into()],
        filters: Filters::default(),
        params,
        control_by: ControlBy::Default,
        fold_column: None,
        group_by: GroupBy::Sample,
        probing: Default::default(),
    };
    let store = mmprobe_store::Store::open(store).unwrap();
    tables::probes::write(results, &sweep::probe_store(&store, &s, &|| {}).unwrap()).unwrap();
}

fn row(concept: &str, layer: usize, selector: Selector, method: &str, alpha: f64) -> InterventionRow {
    InterventionRow {
        concept: concept.into(),
        partition: Partition { tower: Tower::Vision, site: Site::Resid, layer, selector },
        positions: if selector == Selector::Cls { "cls" } else { "all" }.into(),
        method: method.into(),
        direction: if method == "erase" { "leace" } else { "diff-means" }.into(),
        target: if method == "steer" { "red" } else { "" }.into(),
        alpha,
        metric: String::new(),
        measured_concept: String::new(),
        n: 40,
        before: 0.0,
        after: 0.0,
        ci_low: 0.0,
        ci_high: 0.0,
    }
}

/// Erasing colour at CLS layers 1-3, erasing shape at one mean-pooled layer
/// (no probe on mean: the curve falls back to CLS), steering colour toward
/// red at four alphas; three measured concepts, two metrics each.
fn edits() -> Vec<InterventionRow> {
    let mut rows = Vec::new();
    let mut push = |base: InterventionRow, metric: &str, own: f64| {
        for m in MEASURED {
            let before = if metric == "target_rate" { 0.3 } else { 0.8 };
            // The others barely move, each its own way (so their lines do not overlap).
            let effect = if m == base.concept {
                own
            } else if m == "shape" {
                0.01
            } else {
                -0.03
            };
            rows.push(InterventionRow {
                metric: metric.into(),
                measured_concept: m.into(),
                before,
                after: before + effect,
                ci_low: effect - 0.05,
                ci_high: effect + 0.05,
                ..base.clone()
            });
        }
    };
    for (layer, own) in [(1, -0.1), (2, -0.45), (3, -0.3)] {
        for metric in ["zero_shot_accuracy", "probe_accuracy"] {
            push(row("colour", layer, Selector::Cls, "erase", 0.0), metric, own);
        }
    }
    for metric in ["zero_shot_accuracy", "probe_accuracy"] {
        push(row("shape", 2, Selector::Mean, "erase", 0.0), metric, -0.2);
    }
    for alpha in [0.5, 1.0, 2.0, 4.0] {
        for metric in ["target_rate", "zero_shot_accuracy"] {
            let own = if metric == "target_rate" { 0.15 * alpha } else { -0.05 * alpha };
            push(row("colour", 2, Selector::Mean, "steer", alpha), metric, own);
        }
    }
    rows
}

/// The heights of the filled rectangles (bars, legend swatches) of one colour in an SVG.
fn filled(svg: &str, colour: &str) -> Vec<f64> {
    svg.lines()
        .filter(|l| l.starts_with("<rect") && l.contains(&format!("fill=\"{colour}\" stroke=\"none\"")))
        .map(|l| {
            let h = &l[l.find("height=\"").unwrap() + 8..];
            h[..h.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

fn svg(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join("figures").join(format!("{name}.svg"))).unwrap()
}

/// Decodes, is not blank, and is referenced from the page.
fn assert_drawn(out: &Path, html: &str, name: &str) {
    for ext in ["png", "svg"] {
        let f = out.join("figures").join(format!("{name}.{ext}"));
        assert!(std::fs::metadata(&f).is_ok_and(|m| m.len() > 1000), "{} missing or empty", f.display());
        assert!(html.contains(&format!("\"figures/{name}.{ext}\"")), "report.html does not reference {name}.{ext}");
    }
    let img = image::open(out.join("figures").join(format!("{name}.png"))).unwrap().to_luma8();
    let px: Vec<f64> = img.pixels().map(|p| p.0[0] as f64).collect();
    let mean = px.iter().sum::<f64>() / px.len() as f64;
    let var = px.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / px.len() as f64;
    assert!(var > 100.0, "{name}.png looks blank (variance {var:.1})");
}

#[test]
fn interventions_get_a_section_with_layer_selectivity_and_alpha_figures_and_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, res, out) = (tmp.path().join("store"), tmp.path().join("results"), tmp.path().join("report"));
    std::fs::create_dir_all(&res).unwrap();
    store_and_probes(&store, &res);
    let rows = edits();
    tables::interventions::write(&res, &rows).unwrap();
    let s = mmprobe_plot::write_report(&store, &res, &out).unwrap();
    let html = std::fs::read_to_string(&s.html).unwrap();

    assert!(html.contains("<h2 id=\"interventions\">Interventions</h2>"));
    assert!(html.contains("<a href=\"#interventions\">Interventions</a>"), "no contents entry");
    for id in ["iv-colour", "iv-shape", "iv-table"] {
        assert!(html.contains(&format!("id=\"{id}\"")) && html.contains(&format!("href=\"#{id}\"")), "{id}");
    }
    let section = &html[html.find("id=\"interventions\"").unwrap()..];

    // 1. The intervened concept's own change by layer over its probe curve.
    for metric in ["zero_shot_accuracy", "probe_accuracy"] {
        let name = format!("iv_layers_colour_vision_{metric}");
        assert_drawn(&out, section, &name);
        let text = svg(&out, &name);
        for want in ["no effect", "probe: resid cls", "chance", "bootstrap interval"] {
            assert!(text.contains(want), "{name}.svg lacks {want:?}");
        }
    }
    // One layer is a figure too; with no probe on the mean selector, the curve is the tower's best (cls).
    let shape = svg(&out, "iv_layers_shape_vision_zero_shot_accuracy");
    assert!(shape.contains("probe: resid cls") && shape.contains("no effect"));
    assert!(section.contains("no probe on the fit selector (mean), so the cls selector"));
    assert!(!s.figures.iter().any(|f| f.to_string_lossy().contains("iv_layers_colour_vision_target_rate")));

    // 2. Selectivity: a figure per edit (3 erase layers + 1 + 4 alphas), a panel per metric.
    let selectivity: Vec<String> = s
        .figures
        .iter()
        .filter_map(|f| f.file_name()?.to_str()?.strip_suffix(".png"))
        .filter(|n| n.starts_with("iv_selectivity_"))
        .map(String::from)
        .collect();
    assert_eq!(selectivity.len(), 3 + 1 + 4, "{selectivity:?}");
    for name in &selectivity {
        assert_drawn(&out, section, name);
    }
    let erase = svg(&out, "iv_selectivity_erase_colour_leace_vision_resid_2_cls_cls");
    for want in ["colour", "shape", "noise", "colour (intervened on)", "zero-shot accuracy", "probe accuracy"] {
        assert!(erase.contains(want), "selectivity svg lacks {want:?}");
    }
    // The intervened concept's bar in vermillion (one per panel, and the legend's), the others grey, and
    // colour's bar (-0.45) far longer than the others' (0.01, -0.03).
    let (vermillion, grey) = (filled(&erase, "#D55E00"), filled(&erase, "#A5A5A5"));
    assert_eq!((vermillion.len(), grey.len()), (2 + 1, 2 * 2 + 1), "{vermillion:?} {grey:?}");
    assert!(vermillion.iter().cloned().fold(0.0, f64::max) > 5.0 * grey.iter().cloned().fold(0.0, f64::max));

    // 3. Steering: after against alpha, one line per measured concept, target rate first.
    let alpha = "iv_alpha_colour_diff_means_vision_resid_2_mean_all_red";
    assert_drawn(&out, section, alpha);
    let text = svg(&out, alpha);
    for want in ["colour (steered)", "shape", "noise", "before (no steering)", "target rate", "α (steering strength"] {
        assert!(text.contains(want), "{alpha}.svg lacks {want:?}");
    }
    assert!(text.find("target rate").unwrap() < text.find("zero-shot accuracy").unwrap());
    assert!(section.contains("The headline is the target rate of colour"));

    // Every figure of the section has a caption that says how to read it.
    let figures = section[..section.find("id=\"iv-table\"").unwrap()].matches("<figure>").count();
    assert_eq!(figures, 2 + 2 + 8 + 1);
    assert!(section.contains("means the erasure is selective"));

    // The table: every row once, erasures first, the intervened concept's rows first and bold.
    let table = &section[section.find("id=\"iv-table\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let trs: Vec<&str> = table.split("<tr>").skip(2).collect();
    assert_eq!(trs.len(), rows.len());
    assert!(trs[0].contains("<td>erase</td>") && trs[0].contains("<b>colour</b>"), "{}", trs[0]);
    assert!(trs[0].contains("vision resid 1 cls, cls positions"));
    // Colour's rows (erase, then steer), then shape's.
    let first_steer = trs.iter().position(|t| t.contains("<td>steer</td>")).unwrap();
    let first_shape = trs.iter().position(|t| t.starts_with("<td>shape</td>")).unwrap();
    assert_eq!((first_steer, first_shape), (3 * 2 * 3, 3 * 2 * 3 + 4 * 2 * 3));
    assert!(trs[first_steer..first_shape].iter().all(|t| t.contains("<td>steer</td>")), "erase and steer interleave");
    // Numbers as elsewhere: three decimals, n an integer, alpha without trailing zeros, erase alpha a dash.
    assert!(trs[0].contains("<td class=\"num\">40</td>") && trs[0].contains("0.800"));
    assert!(trs[0].contains("<b>-0.100 [-0.150, -0.050]</b>"), "{}", trs[0]);
    assert!(trs[first_steer].contains("<td class=\"num\">0.5</td>") && trs[first_steer].contains("<td>red</td>"));
    assert!(trs[0].contains("<td class=\"num\">–</td>"));
    // To look at it: MMPROBE_KEEP_REPORT=/some/dir cargo test --release -p mmprobe-plot --test interventions
    if let Ok(keep) = std::env::var("MMPROBE_KEEP_REPORT") {
        let _ = std::fs::remove_dir_all(&keep);
        std::fs::rename(tmp.path(), &keep).unwrap();
    }
}

#[test]
fn no_interventions_parquet_no_section() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, res, out) = (tmp.path().join("store"), tmp.path().join("results"), tmp.path().join("report"));
    std::fs::create_dir_all(&res).unwrap();
    store_and_probes(&store, &res);
    let s = mmprobe_plot::write_report(&store, &res, &out).unwrap();
    let html = std::fs::read_to_string(&s.html).unwrap();
    assert!(html.contains("id=\"c-colour\""), "the rest of the report is there");
    assert!(!html.contains("Interventions") && !html.contains("id=\"iv-"));
    assert!(!s.figures.iter().any(|f| f.file_name().unwrap().to_string_lossy().starts_with("iv_")));
}
