//! Interventions inside the model (issue 20): residual-stream edits through
//! the capture hook against transformers with forward hooks applying the same
//! edit (scripts/fixtures/make_interventions.py), on the tiny CLIP and LLaVA.

mod common;

use common::{assert_close, clip_dir, device, fixtures, reference};
use mmprobe_extract::clip::LoadedClip;
use mmprobe_extract::llava::LoadedLlava;
use mmprobe_extract::{Capture, DType, Edit, EditKind, SiteRequest};
use tch::Tensor;

const TOL: f64 = 1e-4;

fn cases() -> Vec<serde_json::Value> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("interventions/reference.json")).unwrap()).unwrap();
    meta["cases"].as_array().unwrap().clone()
}

fn edit_of(case: &serde_json::Value, r: &mmprobe_extract::weights::Checkpoint, positions: Tensor) -> Edit {
    let name = case["name"].as_str().unwrap();
    let t = |k: &str| r.tensor(&format!("{name}.{k}")).unwrap().to_device(device());
    let kind = match case["kind"].as_str().unwrap() {
        "erase" => EditKind::Erase { u: t("u") },
        "steer" => EditKind::Steer { u: t("u"), alpha: case["alpha"].as_f64().unwrap() },
        "affine" => EditKind::Affine { mu: t("mu"), down: t("down"), up: t("up") },
        other => panic!("unknown edit {other}"),
    };
    let layers = case["layers"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as usize).collect();
    Edit { layers, positions: Some(positions.to_device(device()).ne(0)), kind }
}

#[test]
fn clip_edits_match_transformers_hooks() {
    let r = reference(&fixtures().join("interventions"));
    let inputs = reference(&clip_dir("tiny-a"));
    let clip = LoadedClip::load(&clip_dir("tiny-a"), device(), DType::F32).unwrap();
    let m = &clip.model;
    let ids = inputs.tensor("input_ids").unwrap().to_device(device());
    let mask = inputs.tensor("attention_mask").unwrap().to_device(device());
    let pixels = inputs.tensor("pixel_values").unwrap().to_device(device());
    let (nt, nv) = (m.config.text_config.num_hidden_layers, m.config.vision_config.num_hidden_layers);
    let mut checked = 0;
    for case in cases().iter().filter(|c| c["model"] == "clip") {
        let name = case["name"].as_str().unwrap();
        let tower = case["tower"].as_str().unwrap();
        let edit = edit_of(case, &r, r.tensor(&format!("{name}.positions")).unwrap());
        let embeds = SiteRequest { embeds: true, ..Default::default() };
        let (mut text, mut vision) = match tower {
            "text" => (Capture::new(SiteRequest::everything(nt)).with_edit(edit), Capture::new(embeds)),
            _ => (Capture::new(embeds), Capture::new(SiteRequest::everything(nv)).with_edit(edit)),
        };
        tch::no_grad(|| {
            m.encode_text(&ids, &mask, &mut text);
            m.encode_image(&pixels, &mut vision);
        });
        let edited = if tower == "text" { &text } else { &vision };
        for (l, h) in &edited.resid {
            let want = r.tensor(&format!("{name}.{tower}.resid.{l}")).unwrap();
            assert_close(&format!("{name} {tower} resid {l}"), h, &want, TOL);
        }
        for (t, cap) in [("text", &text), ("vision", &vision)] {
            let want = r.tensor(&format!("{name}.{t}.embeds")).unwrap();
            assert_close(&format!("{name} {t} embeds"), cap.embeds.as_ref().unwrap(), &want, TOL);
        }
        // alpha = 0 is the plain forward, exactly.
        if case["kind"] == "steer" && case["alpha"].as_f64() == Some(0.0) {
            let mut plain = Capture::new(SiteRequest::everything(nt));
            tch::no_grad(|| m.encode_text(&ids, &mask, &mut plain));
            for (l, h) in &plain.resid {
                assert!(h.equal(&text.resid[l]), "{name}: alpha 0 changed layer {l}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 6);
}

#[test]
fn llava_edits_match_transformers_hooks() {
    let r = reference(&fixtures().join("interventions"));
    let dir = fixtures().join("llava/llava-hub");
    let inputs = reference(&dir);
    let l = LoadedLlava::load(&dir, device(), DType::F32).unwrap();
    let m = &l.model;
    let n = m.language_model.layers.len();
    let nv = m.config.vision_config.num_hidden_layers();
    let mut checked = 0;
    for case in cases().iter().filter(|c| c["model"] == "llava") {
        let name = case["name"].as_str().unwrap();
        let tower = case["tower"].as_str().unwrap();
        for i in 0..3 {
            let ids = inputs.tensor(&format!("p{i}.input_ids")).unwrap().to_device(device()).unsqueeze(0);
            let px = inputs.tensor(&format!("p{i}.pixel_values")).unwrap().to_device(device());
            let mask = Tensor::ones_like(&ids);
            let positions = r.tensor(&format!("{name}.p{i}.positions")).unwrap().unsqueeze(0);
            let edit = edit_of(case, &r, positions);
            let (mut vision, mut decoder) = match tower {
                "vision" => (
                    Capture::new(SiteRequest { resid: (0..=nv).collect(), ..Default::default() }).with_edit(edit),
                    Capture::new(SiteRequest { resid: (0..=n).collect(), raw: [n].into(), ..Default::default() }),
                ),
                _ => (
                    Capture::nothing(),
                    Capture::new(SiteRequest { resid: (0..=n).collect(), raw: [n].into(), ..Default::default() })
                        .with_edit(edit),
                ),
            };
            let last = tch::no_grad(|| {
                let feats = m.encode_image(&px, &mut vision);
                m.decode(&ids, &mask, Some(&feats), &mut decoder)
            });
            for (lay, h) in &decoder.resid {
                let want = r.tensor(&format!("{name}.p{i}.decoder.resid.{lay}")).unwrap();
                assert_close(&format!("{name} p{i} decoder resid {lay}"), &h.squeeze_dim(0), &want, TOL);
            }
            if tower == "vision" {
                for (lay, h) in &vision.resid {
                    let want = r.tensor(&format!("{name}.p{i}.vision.resid.{lay}")).unwrap();
                    assert_close(&format!("{name} p{i} vision resid {lay}"), &h.squeeze_dim(0), &want, TOL);
                }
            }
            let t = last.size()[1];
            let logits = tch::no_grad(|| m.logits(&last.select(1, t - 1))).squeeze_dim(0);
            let want = r.tensor(&format!("{name}.p{i}.logits")).unwrap();
            assert_close(&format!("{name} p{i} logits"), &logits, &want, TOL);
            // alpha = 0 is the plain forward, exactly.
            if case["kind"] == "steer" && case["alpha"].as_f64() == Some(0.0) {
                let mut plain = Capture::new(SiteRequest { resid: (0..=n).collect(), ..Default::default() });
                let _last = tch::no_grad(|| {
                    let feats = m.encode_image(&px, &mut Capture::nothing());
                    m.decode(&ids, &mask, Some(&feats), &mut plain)
                });
                for (lay, h) in &plain.resid {
                    assert!(h.equal(&decoder.resid[lay]), "{name} p{i}: alpha 0 changed layer {lay}");
                }
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 6);
}
