//! Honest numbers on every store: token rows never leak across folds, groups
//! stay whole, another tool's partial manifest works, duplicate rows and
//! incomplete stores are said, a too-small partition (or a given fold left
//! empty) is named and skipped,
//! bad geometry parameters are refused, and intervals hold under the null.

use std::path::Path;

use mmprobe_analysis::directions::Method;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::probe::ProbeParams;
use mmprobe_analysis::rng::Rng;
use mmprobe_analysis::sweep::{self, ControlBy, GeometryParams, GroupBy, ProbeSweep};
use mmprobe_analysis::tables::ProbeRow;
use mmprobe_analysis::{CheckedProbe, Filters};
use mmprobe_store::part::write_part;
use mmprobe_store::store::write_parquet;
use mmprobe_store::{PartRows, Partition, Selector, Site, Store, Tower};
use polars::prelude::*;

fn part(layer: usize, selector: Selector) -> Partition {
    Partition { tower: Tower::Vision, site: Site::Resid, layer, selector }
}

/// samples.parquet with `sample`, a binary `label`, a `group` column and `text`.
fn write_samples(root: &Path, label: &[&str], group: &[u32]) {
    let n = label.len();
    let mut df = DataFrame::new(
        n,
        vec![
            Column::new("sample".into(), (0..n as u32).collect::<Vec<_>>()),
            Column::new("text".into(), (0..n).map(|i| format!("prompt {i}")).collect::<Vec<_>>()),
            Column::new("label".into(), label.to_vec()),
            Column::new("group".into(), group.to_vec()),
        ],
    )
    .unwrap();
    write_parquet(&root.join("samples.parquet"), &mut df).unwrap();
}

fn params(repeats: usize, permutations: usize) -> CheckedProbe {
    ProbeParams { repeats, permutations, ..Default::default() }.check().unwrap()
}

fn probe(root: &Path, p: CheckedProbe, group_by: GroupBy) -> Vec<ProbeRow> {
    let store = Store::open(root).unwrap();
    let s = ProbeSweep {
        concepts: vec!["label".into()],
        filters: Filters::default(),
        params: p,
        control_by: ControlBy::Off,
        fold_column: None,
        group_by,
        probing: Default::default(),
    };
    sweep::probe_store(&store, &s, &|| {}).unwrap()
}

fn covers(r: &ProbeRow, chance: f64) -> bool {
    r.accuracy_ci_low.unwrap() <= chance && chance <= r.accuracy_ci_high.unwrap()
}

/// 60 samples, each a random 16-d vector; 20 token rows per sample = that
/// vector plus small noise; a random label per sample, unrelated to it.
fn leaky_store(root: &Path) {
    let (n, tokens, d) = (60, 20, 64);
    let mut rng = Rng::new(21);
    let base: Vec<Vec<f32>> = (0..n).map(|_| (0..d).map(|_| rng.gaussian() as f32).collect()).collect();
    let mut labels: Vec<&str> = (0..n).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect();
    rng.shuffle(&mut labels);
    let mut all = PartRows { width: d, ..Default::default() };
    for (s, v) in base.iter().enumerate() {
        for t in 0..tokens {
            all.sample.push(s as u32);
            all.pos.push(t);
            all.data.extend(v.iter().map(|x| x + 0.1 * rng.gaussian() as f32));
        }
    }
    write_part(part(1, Selector::All).part(root, 0, 0), &all).unwrap();
    let cls = PartRows {
        width: d,
        sample: (0..n as u32).collect(),
        pos: vec![0; n],
        data: base.iter().flatten().copied().collect(),
    };
    write_part(part(1, Selector::Cls).part(root, 0, 0), &cls).unwrap();
    write_samples(root, &labels, &(0..n as u32).collect::<Vec<_>>());
}

#[test]
fn token_rows_of_one_sample_never_sit_on_both_sides_of_a_split() {
    let tmp = tempfile::tempdir().unwrap();
    leaky_store(tmp.path());
    let rows = probe(tmp.path(), params(5, 0), GroupBy::Sample);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!((r.group_by.as_str(), r.n_groups), ("sample", 60), "{r:?}");
        assert!(
            covers(r, 0.5),
            "{}: accuracy {:?} [{:?}, {:?}]",
            r.partition,
            r.accuracy,
            r.accuracy_ci_low,
            r.accuracy_ci_high
        );
    }
    let all = rows.iter().find(|r| r.partition.selector == Selector::All).unwrap();
    assert_eq!(all.n, 1200);

    // What per-row folds did before: every token its own group memorises the samples.
    let store = Store::open(tmp.path()).unwrap();
    let l = sweep::load(&store, part(1, Selector::All), &["label"]).unwrap();
    let c = l.concept("label").unwrap();
    let mmprobe_analysis::labels::Target::Classes { y, .. } = &c.target else { panic!() };
    let leaky = mmprobe_analysis::probe::probe_classes(
        l.x.view(),
        y,
        2,
        &mmprobe_analysis::folds::Groups::singletons(y.len()),
        None,
        &params(1, 0),
    )
    .unwrap();
    assert!(leaky.accuracy > 0.9, "per-row folds leak: {}", leaky.accuracy);
}

#[test]
fn a_group_column_keeps_rows_that_share_an_image_in_one_fold() {
    // 40 images, 3 prompts each (a sample per prompt); a prompt's row is its
    // image's vector plus noise; the label is drawn per image at random.
    let tmp = tempfile::tempdir().unwrap();
    let (images, per, d) = (40, 3, 64);
    let mut rng = Rng::new(8);
    let base: Vec<Vec<f32>> = (0..images).map(|_| (0..d).map(|_| rng.gaussian() as f32).collect()).collect();
    let mut image_label: Vec<&str> = (0..images).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect();
    rng.shuffle(&mut image_label);
    let n = images * per;
    let group: Vec<u32> = (0..n as u32).map(|s| s / per as u32).collect();
    let rows = PartRows {
        width: d,
        sample: (0..n as u32).collect(),
        pos: vec![0; n],
        data: group
            .iter()
            .flat_map(|&g| base[g as usize].iter().map(|x| x + 0.1 * rng.gaussian() as f32).collect::<Vec<_>>())
            .collect(),
    };
    write_part(part(1, Selector::Cls).part(tmp.path(), 0, 0), &rows).unwrap();
    let labels: Vec<&str> = group.iter().map(|&g| image_label[g as usize]).collect();
    write_samples(tmp.path(), &labels, &group);

    let by_sample = &probe(tmp.path(), params(5, 0), GroupBy::Sample)[0];
    assert!(by_sample.accuracy.unwrap() > 0.8, "prompts of one image on both sides: {:?}", by_sample.accuracy);
    let by_image = &probe(tmp.path(), params(5, 0), GroupBy::Column("group".into()))[0];
    assert_eq!((by_image.group_by.as_str(), by_image.n_groups), ("group", 40));
    assert!(covers(by_image, 0.5), "{by_image:?}");
}

/// A small honest store: 60 samples, vision resid layers 0..3 (cls), embeds
/// of both towers, a label carried by feature 0 from layer 1 on.
fn plain_store(root: &Path) {
    let n = 60;
    let mut rng = Rng::new(3);
    let labels: Vec<&str> = (0..n).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect();
    let mut write = |p: Partition, d: usize, strength: f32| {
        let data = (0..n)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| rng.gaussian() as f32 + if j == 0 && i % 2 == 0 { strength } else { 0.0 })
            .collect();
        write_part(p.part(root, 0, 0), &PartRows { width: d, sample: (0..n as u32).collect(), pos: vec![-1; n], data })
            .unwrap();
    };
    for l in 0..4 {
        write(part(l, Selector::Cls), 8, if l == 0 { 0.0 } else { 3.0 });
    }
    for t in [Tower::Vision, Tower::Text] {
        write(Partition { tower: t, site: Site::Embeds, layer: 0, selector: Selector::Pooled }, 6, 3.0);
    }
    write_samples(root, &labels, &(0..n as u32).collect::<Vec<_>>());
}

#[test]
fn another_tools_partial_manifest_works_with_every_analysis() {
    let tmp = tempfile::tempdir().unwrap();
    plain_store(tmp.path());
    std::fs::write(
        tmp.path().join("manifest.json"),
        r#"{"format_version":1,"model":{"family":"clip","path":"x"},"dataset":{"rows":500}}"#,
    )
    .unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.manifest.as_ref().unwrap().model.as_ref().unwrap().config_sha256, "", "unknown, not an error");
    let rows = probe(tmp.path(), params(2, 0), GroupBy::Sample);
    assert_eq!(rows.len(), 6);
    let logistic = LogisticParams::default().check().unwrap();
    let concepts = vec!["label".to_string()];
    let f = Filters::default();
    let dirs =
        sweep::directions_store(&store, &concepts, &f, &[Method::DiffMeans], &logistic, &GroupBy::Sample, &|| {})
            .unwrap();
    assert_eq!(dirs.rows.len(), 6);
    let gp = GeometryParams { concepts: concepts.clone(), ..Default::default() }.check().unwrap();
    let (geo, cka, _) = sweep::geometry_store(&store, &f, &gp, &logistic, &|| {}).unwrap();
    assert_eq!((geo.pairs, cka.len()), (60, 6 * 7 / 2));
    let (erased, _) = sweep::erase_store(&store, "label", &f, &params(1, 0), &GroupBy::Sample, &|| {}).unwrap();
    assert_eq!(erased.len(), 6);
}

#[test]
fn duplicate_rows_are_refused_naming_the_partition() {
    let tmp = tempfile::tempdir().unwrap();
    plain_store(tmp.path());
    // A second part file holding samples 0..9 of layer 2 again.
    let p = part(2, Selector::Cls);
    let rows = PartRows { width: 8, sample: (0..10).collect(), pos: vec![-1; 10], data: vec![0.5; 80] };
    write_part(p.part(tmp.path(), 1, 0), &rows).unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let s = ProbeSweep {
        concepts: vec!["label".into()],
        filters: Filters::default(),
        params: params(1, 0),
        control_by: ControlBy::Off,
        fold_column: None,
        group_by: GroupBy::Sample,
        probing: Default::default(),
    };
    let e = sweep::probe_store(&store, &s, &|| {}).unwrap_err().to_string();
    assert!(e.contains("tower=vision/site=resid/layer=2/selector=cls") && e.contains("10 duplicate rows"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn incomplete_stores_and_partitions_are_said() {
    let tmp = tempfile::tempdir().unwrap();
    plain_store(tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    let parts = store.partitions().unwrap();
    assert!(store.gaps(&parts).unwrap().is_empty(), "a whole store has no gaps");

    // Layer 3 lost its part file and was rewritten with 50 of the 60 samples;
    // an interrupted run left progress at 5 of 30 chunks.
    let p = part(3, Selector::Cls);
    std::fs::remove_file(p.part(tmp.path(), 0, 0)).unwrap();
    let rows = PartRows { width: 8, sample: (0..50).collect(), pos: vec![-1; 50], data: vec![0.5; 400] };
    write_part(p.part(tmp.path(), 0, 0), &rows).unwrap();
    let progress = mmprobe_store::ShardProgress {
        shard: 0,
        shards: 1,
        chunks_done: (0..5).collect(),
        chunks_total: 30,
        ..Default::default()
    };
    progress.save(tmp.path()).unwrap();
    let gaps = store.gaps(&parts).unwrap();
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(gaps[0].contains("shard 0/1 finished 5 of 30 chunks"), "{}", gaps[0]);
    assert!(
        gaps[1].contains("tower=vision/site=resid/layer=3/selector=cls holds 50 of the 60")
            && gaps[1].contains("e.g. sample 50"),
        "{}",
        gaps[1]
    );
}

#[test]
fn a_partition_too_small_for_the_folds_is_named_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    plain_store(tmp.path());
    // Layer 3 holds 6 samples: 3 of each class, fewer than the 5 folds.
    let p = part(3, Selector::Cls);
    std::fs::remove_file(p.part(tmp.path(), 0, 0)).unwrap();
    let rows = PartRows { width: 8, sample: (0..6).collect(), pos: vec![-1; 6], data: vec![0.5; 48] };
    write_part(p.part(tmp.path(), 0, 0), &rows).unwrap();
    let rows = probe(tmp.path(), params(1, 0), GroupBy::Sample);
    assert_eq!(rows.len(), 6, "every partition has a row");
    let small = rows.iter().find(|r| r.partition == p).unwrap();
    assert!(small.accuracy.is_none(), "{small:?}");
    assert!(small.skipped.as_deref().unwrap().contains("fewer than the 5 folds"), "{:?}", small.skipped);
    let others: Vec<&ProbeRow> = rows.iter().filter(|r| r.partition != p).collect();
    assert!(others.iter().all(|r| r.skipped.is_none() && r.accuracy.is_some()));
}

#[test]
fn geometry_parameters_are_checked_before_any_work() {
    let e = GeometryParams { cka_rows: 0, ..Default::default() }.check().unwrap_err().to_string();
    assert!(e.contains("--cka-rows must be at least 3, got 0"), "{e}");
    assert!(GeometryParams { silhouette_rows: 1, ..Default::default() }.check().is_err());
    assert!(GeometryParams { folds: 1, ..Default::default() }.check().is_err());
    assert!(GeometryParams::default().check().is_ok());
}

/// 40 partitions of 200 samples x 32-d noise with a balanced binary label
/// unrelated to them, and a 41st where the label is planted.
fn null_store(root: &Path, planted: bool) {
    let (n, d) = (200, 32);
    let mut rng = Rng::new(99);
    let mut labels: Vec<&str> = (0..n).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect();
    rng.shuffle(&mut labels);
    for l in 0..40 {
        let data = (0..n * d).map(|_| rng.gaussian() as f32).collect();
        write_part(
            part(l, Selector::Cls).part(root, 0, 0),
            &PartRows { width: d, sample: (0..n as u32).collect(), pos: vec![-1; n], data },
        )
        .unwrap();
    }
    if planted {
        let data = (0..n * d)
            .map(|k| rng.gaussian() as f32 + if k % d == 0 && labels[k / d] == "a" { 1.0 } else { 0.0 })
            .collect();
        write_part(
            part(40, Selector::Cls).part(root, 0, 0),
            &PartRows { width: d, sample: (0..n as u32).collect(), pos: vec![-1; n], data },
        )
        .unwrap();
    }
    write_samples(root, &labels, &(0..n as u32).collect::<Vec<_>>());
}

#[test]
fn intervals_and_p_values_hold_under_the_null() {
    let tmp = tempfile::tempdir().unwrap();
    null_store(tmp.path(), true);
    let p = ProbeParams {
        repeats: 5,
        permutations: 999,
        logistic: LogisticParams { c: Some(0.1), ..Default::default() },
        ..Default::default()
    }
    .check()
    .unwrap();
    let rows = probe(tmp.path(), p, GroupBy::Sample);
    let (nulls, planted): (Vec<&ProbeRow>, Vec<&ProbeRow>) = rows.iter().partition(|r| r.partition.layer < 40);
    assert_eq!((nulls.len(), planted.len()), (40, 1));
    let covered = nulls.iter().filter(|r| covers(r, 0.5)).count();
    let raw = nulls.iter().filter(|r| r.p_value.unwrap() < 0.05).count();
    let bh = nulls.iter().filter(|r| r.p_value_bh.unwrap() < 0.05).count();
    let holm = nulls.iter().filter(|r| r.p_value_holm.unwrap() < 0.05).count();
    eprintln!("null: coverage {covered}/40, p < 0.05 raw {raw}, BH {bh}, Holm {holm}");
    assert!(covered as f64 / 40.0 >= 0.85, "coverage of chance {covered}/40");
    assert!(raw <= 6 && bh <= 2 && holm <= 2, "raw {raw}, BH {bh}, Holm {holm}");
    let r = planted[0];
    eprintln!(
        "planted: accuracy {:.3} [{:.3}, {:.3}], p {:?}, BH {:?}, Holm {:?}",
        r.accuracy.unwrap(),
        r.accuracy_ci_low.unwrap(),
        r.accuracy_ci_high.unwrap(),
        r.p_value,
        r.p_value_bh,
        r.p_value_holm
    );
    assert!(r.accuracy_ci_low.unwrap() > 0.5, "{r:?}");
    assert!(r.p_value_bh.unwrap() < 0.05 && r.p_value_holm.unwrap() < 0.05, "{r:?}");
}

/// 40 samples in two given folds (`split`): `label` is set on both folds,
/// `score` (a number) and `tag` (classes) only on fold `f0`, so cross-validating
/// them by `split` leaves a fold with no training rows.
fn split_store(root: &Path) {
    let n = 40;
    let mut rng = Rng::new(5);
    let data = (0..n)
        .flat_map(|i| (0..4).map(move |j| (i, j)))
        .map(|(i, j)| rng.gaussian() as f32 + if j == 0 && i % 2 == 0 { 3.0 } else { 0.0 });
    let rows = PartRows { width: 4, sample: (0..n as u32).collect(), pos: vec![0; n], data: data.collect() };
    write_part(part(1, Selector::Cls).part(root, 0, 0), &rows).unwrap();
    let on_f0 = |i: usize| i < n / 2;
    let mut df = DataFrame::new(
        n,
        vec![
            Column::new("sample".into(), (0..n as u32).collect::<Vec<_>>()),
            Column::new("text".into(), (0..n).map(|i| format!("prompt {i}")).collect::<Vec<_>>()),
            Column::new("label".into(), (0..n).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect::<Vec<_>>()),
            Column::new("split".into(), (0..n).map(|i| if on_f0(i) { "f0" } else { "f1" }).collect::<Vec<_>>()),
            Column::new("score".into(), (0..n).map(|i| on_f0(i).then_some(i as f64)).collect::<Vec<_>>()),
            Column::new(
                "tag".into(),
                (0..n).map(|i| on_f0(i).then_some(if i % 2 == 0 { "x" } else { "y" })).collect::<Vec<_>>(),
            ),
        ],
    )
    .unwrap();
    write_parquet(&root.join("samples.parquet"), &mut df).unwrap();
}

#[test]
fn a_given_fold_without_training_rows_is_named_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    split_store(tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    let mut p = ProbeParams { folds: 2, ..Default::default() };
    p.ridge.alpha = Some(1.0);
    let s = ProbeSweep {
        concepts: vec!["label".into(), "score".into(), "tag".into()],
        filters: Filters::default(),
        params: p.check().unwrap(),
        control_by: ControlBy::Off,
        fold_column: Some("split".into()),
        group_by: GroupBy::Sample,
        probing: Default::default(),
    };
    let rows = sweep::probe_store(&store, &s, &|| {}).unwrap();
    let label = rows.iter().find(|r| r.concept == "label").unwrap();
    assert!(label.skipped.is_none() && label.accuracy.unwrap() > 0.8, "{label:?}");
    for concept in ["score", "tag"] {
        let r = rows.iter().find(|r| r.concept == concept).unwrap();
        let why = r.skipped.as_deref().unwrap_or_default();
        let named = format!("--fold-column split: no row where '{concept}' is set has split = 'f1'");
        assert!(why.starts_with(&named), "{concept}: {why:?}");
    }
}
