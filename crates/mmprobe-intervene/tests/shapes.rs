//! Interventions on the bundled shapes models, whose concepts are known:
//! erasing colour must take colour out of what the model does and leave
//! shape and size mostly alone; steering toward red must make it say red.
//! The numbers each test prints are what the models did; the assertions are
//! the claims, not tuned to the numbers.

use std::path::{Path, PathBuf};

use mmprobe_analysis::tables::InterventionRow;
use mmprobe_extract::{DeviceChoice, ExtractOptions, Quiet, RunOptions, Selector, Site, Tower};
use mmprobe_intervene::{DirectionMethod, InterveneParams, Method, Positions, intervene};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn data() -> PathBuf {
    repo("datasets/shapes/data.csv")
}

fn store(model: &str, towers: &[Tower], selectors: &[Selector], out: &Path) -> PathBuf {
    store_of(model, &data(), towers, selectors, out)
}

/// A store of every resid layer of `towers` of `model` over the dataset `data`.
fn store_of(model: &str, data: &Path, towers: &[Tower], selectors: &[Selector], out: &Path) -> PathBuf {
    let opts = ExtractOptions {
        towers: Some(towers.to_vec()),
        sites: vec![Site::Resid],
        selectors: selectors.to_vec(),
        force: true,
        ..ExtractOptions::new(repo(model), data.to_path_buf(), out.to_path_buf())
    };
    mmprobe_extract::extract(&opts, &Quiet).unwrap();
    out.to_path_buf()
}

const CLIP: &str = "datasets/models/shapes-clip";
const LLAVA: &str = "datasets/models/shapes-llava";

/// The device the tests run on: `MMPROBE_TEST_DEVICE` (e.g. `cuda:0`), else the CPU.
fn on() -> RunOptions {
    let device = match std::env::var("MMPROBE_TEST_DEVICE") {
        Ok(d) => d.parse().unwrap_or_else(|e| panic!("MMPROBE_TEST_DEVICE={d}: {e}")),
        Err(_) => DeviceChoice::Cpu,
    };
    RunOptions { device, ..Default::default() }
}

fn run(model: &str, store: &Path, p: InterveneParams) -> Vec<InterventionRow> {
    let out = intervene(&repo(model), &data(), store, &p.check().unwrap(), &on(), &|_| {}).unwrap();
    for r in &out.rows {
        eprintln!(
            "{} layer {} alpha {:.2} {} {}: {:.3} -> {:.3} [{:+.3}, {:+.3}]",
            r.partition.tower,
            r.partition.layer,
            r.alpha,
            r.metric,
            r.measured_concept,
            r.before,
            r.after,
            r.ci_low,
            r.ci_high
        );
    }
    out.rows
}

fn find<'a>(rows: &'a [InterventionRow], layer: usize, alpha: f64, metric: &str, concept: &str) -> &'a InterventionRow {
    rows.iter()
        .find(|r| r.partition.layer == layer && r.alpha == alpha && r.metric == metric && r.measured_concept == concept)
        .unwrap_or_else(|| panic!("no row for layer {layer} alpha {alpha} {metric} {concept}"))
}

fn erase(concept: &str, at: &str) -> InterveneParams {
    InterveneParams {
        concept: concept.into(),
        at: at.parse().unwrap(),
        method: Method::Erase,
        direction: DirectionMethod::Leace,
        bootstrap: 200,
        ..Default::default()
    }
}

#[test]
fn erasing_colour_in_shapes_clip_takes_colour_out_of_zero_shot_and_not_shape() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(CLIP, &[Tower::Vision], &[Selector::Mean], dir.path());
    let rows = run(CLIP, &s, erase("colour", "vision/resid/-1"));
    let colour = find(&rows, 4, 0.0, "zero_shot_accuracy", "colour");
    let (shape, size) =
        (find(&rows, 4, 0.0, "zero_shot_accuracy", "shape"), find(&rows, 4, 0.0, "zero_shot_accuracy", "size"));
    // Eight colours: chance is 0.125.
    assert!(colour.before > 0.9 && colour.after < 0.4, "{colour:?}");
    assert!(colour.ci_high < 0.0, "the drop's interval excludes no change: {colour:?}");
    for other in [shape, size] {
        assert!(other.effect().abs() < colour.effect().abs() / 3.0, "{other:?} vs {colour:?}");
    }
    // Amnesic read-out: a fresh probe on the erased layer loses colour, keeps size.
    let probe = find(&rows, 4, 0.0, "probe_accuracy", "colour");
    assert!(probe.effect() < -0.3, "{probe:?}");
    assert!(find(&rows, 4, 0.0, "probe_accuracy", "size").effect().abs() < 0.1);
    // Held-out samples only, each measured both times.
    assert!(rows.iter().all(|r| r.n <= 150 && r.n > 100), "fit share 0.5 of 300");

    // Projecting out the LDA directions is no eraser: it leaves more of colour than LEACE does.
    let lda = run(CLIP, &s, InterveneParams { direction: DirectionMethod::Lda, ..erase("colour", "vision/resid/-1") });
    let lda_colour = find(&lda, 4, 0.0, "zero_shot_accuracy", "colour");
    assert!(lda_colour.after > colour.after, "{lda_colour:?} vs {colour:?}");
}

#[test]
fn erasing_colour_in_shapes_llava_s_vision_tower_drops_colour_answers_most() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(LLAVA, &[Tower::Vision], &[Selector::Mean], dir.path());
    // Layer 3 feeds both of the layers LLaVA reads (3 and 4).
    let rows = run(LLAVA, &s, erase("colour", "vision/resid/3"));
    let colour = find(&rows, 3, 0.0, "vqa_accuracy", "colour");
    assert!(colour.before > 0.9 && colour.after < 0.4, "towards chance (0.125): {colour:?}");
    for c in ["shape", "size"] {
        let other = find(&rows, 3, 0.0, "vqa_accuracy", c);
        assert!(other.effect().abs() < colour.effect().abs() / 3.0, "{other:?} vs {colour:?}");
    }
    let logp = find(&rows, 3, 0.0, "answer_log_prob", "colour");
    assert!(logp.after < logp.before - 1.0, "{logp:?}");
}

#[test]
fn steering_shapes_llava_toward_red_turns_colour_answers_red_as_alpha_grows() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(LLAVA, &[Tower::Decoder], &[Selector::MeanImage], dir.path());
    let p = InterveneParams {
        concept: "colour".into(),
        at: "decoder/resid/1".parse().unwrap(),
        positions: Positions::Image,
        method: Method::Steer,
        direction: DirectionMethod::DiffMeans,
        target: Some("red".into()),
        bootstrap: 200,
        ..Default::default()
    };
    let rows = run(LLAVA, &s, p);
    let mut rates: Vec<(f64, f64, f64)> =
        rows.iter().filter(|r| r.metric == "target_rate").map(|r| (r.alpha, r.before, r.after)).collect();
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(rates.len(), 4, "four default alphas");
    let before = rates[0].1;
    // Red is one colour in eight: about an eighth of the answers are red before.
    assert!(before < 0.25, "{rates:?}");
    assert!(rates.windows(2).all(|w| w[1].2 >= w[0].2), "red grows with alpha: {rates:?}");
    assert!(rates[3].2 > 0.8, "{rates:?}");
}

#[test]
fn steering_by_zero_is_the_plain_forward_pass_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(LLAVA, &[Tower::Vision, Tower::Decoder], &[Selector::Mean, Selector::Last], dir.path());
    for (at, positions) in [("vision/resid/2", Positions::All), ("decoder/resid/1", Positions::Last)] {
        let p = InterveneParams {
            concept: "shape".into(),
            at: at.parse().unwrap(),
            positions,
            method: Method::Steer,
            direction: DirectionMethod::DiffMeans,
            target: Some("circle".into()),
            alphas: Some(vec![0.0]),
            bootstrap: 100,
            ..Default::default()
        };
        let rows = run(LLAVA, &s, p);
        assert!(rows.len() > 10);
        for r in &rows {
            assert!(r.before == r.after && r.ci_low == 0.0 && r.ci_high == 0.0, "{r:?}");
        }
    }
}

#[test]
fn requests_that_cannot_mean_anything_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(LLAVA, &[Tower::Decoder], &[Selector::MeanImage], dir.path());
    let refused = |p: InterveneParams, model: &str| {
        let e = intervene(&repo(model), &data(), &s, &p.check().unwrap(), &on(), &|_| {}).err().expect("refused");
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        msg
    };
    let image = |at: &str| InterveneParams { positions: Positions::Image, ..erase("colour", at) };
    assert!(refused(image("decoder/resid/3"), LLAVA).contains("final norm"));
    assert!(refused(image("decoder/resid/1"), CLIP).contains("no decoder tower"));
    assert!(refused(erase("colour", "vision/resid/2"), LLAVA).contains("has no partition"));
    let other = InterveneParams { concept: "texture".into(), ..image("decoder/resid/1") };
    assert!(refused(other, LLAVA).contains("'texture'"));
    let steer = InterveneParams {
        method: Method::Steer,
        direction: DirectionMethod::DiffMeans,
        target: Some("mauve".into()),
        ..image("decoder/resid/1")
    };
    assert!(refused(steer, LLAVA).contains("mauve"));

    // A question without <image> would take another row's image features: refused.
    let csv = std::fs::read_to_string(data()).unwrap();
    let images = repo("datasets/shapes/images");
    let edited = csv
        .replace(",images/", &format!(",{}/", images.display()))
        .replace("<image> What colour is the shape?", "USER: What colour is the shape? ASSISTANT:");
    let other = tempfile::tempdir().unwrap();
    let path = other.path().join("data.csv");
    std::fs::write(&path, edited).unwrap();
    let opts_store = store_of(LLAVA, &path, &[Tower::Decoder], &[Selector::MeanImage], &other.path().join("store"));
    let p = image("decoder/resid/1").check().unwrap();
    let e = intervene(&repo(LLAVA), &path, &opts_store, &p, &on(), &|_| {}).err().expect("refused");
    assert!(e.to_string().contains("exactly one <image>"), "{e}");
    // The store's dataset is checked too.
    let e = intervene(&repo(LLAVA), &data(), &opts_store, &p, &on(), &|_| {}).err().expect("refused");
    assert!(e.to_string().contains("was extracted from"), "{e}");
}

#[test]
fn an_edit_at_the_last_prompt_position_reaches_every_answer_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(LLAVA, &[Tower::Decoder], &[Selector::Last], dir.path());
    let p = InterveneParams { positions: Positions::Last, ..erase("colour", "decoder/resid/1") };
    let rows = run(LLAVA, &s, p);
    let logp = find(&rows, 1, 0.0, "answer_log_prob", "colour");
    assert!(logp.after != logp.before, "the scored answer tokens see the edit: {logp:?}");
}

#[test]
fn a_siglip_dual_encoder_takes_edits_in_both_towers_and_alpha_zero_changes_nothing() {
    // A tiny random SigLIP (scripts/fixtures/siglip): no concept to find, but
    // every measurement runs and steering by 0 is the plain forward pass.
    const SIGLIP: &str = "scripts/fixtures/siglip/siglip1-head";
    let dir = tempfile::tempdir().unwrap();
    let s = store(SIGLIP, &[Tower::Vision, Tower::Text], &[Selector::Mean], dir.path());
    for at in ["vision/resid/1", "text/resid/1"] {
        let p = InterveneParams {
            concept: "colour".into(),
            at: at.parse().unwrap(),
            method: Method::Steer,
            direction: DirectionMethod::DiffMeans,
            target: Some("red".into()),
            alphas: Some(vec![0.0]),
            bootstrap: 100,
            ..Default::default()
        };
        let rows = run(SIGLIP, &s, p);
        for metric in ["zero_shot_accuracy", "caption_similarity", "target_rate", "probe_accuracy"] {
            assert!(rows.iter().any(|r| r.metric == metric), "{at}: no {metric}");
        }
        assert!(rows.iter().all(|r| r.before == r.after), "{at}");
    }
    let erased = run(SIGLIP, &s, erase("colour", "vision/resid/-1"));
    assert!(erased.iter().any(|r| r.metric == "zero_shot_accuracy" && r.measured_concept == "colour"));
    let cls = InterveneParams { positions: Positions::Cls, ..erase("colour", "vision/resid/-1") };
    let e = intervene(&repo(SIGLIP), &data(), &s, &cls.check().unwrap(), &on(), &|_| {}).err().expect("no CLS");
    assert!(e.to_string().contains("no CLS token"), "{e}");
}
