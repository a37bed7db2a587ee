//! Every hidden state of both CLIP towers against transformers' CLIPModel.

mod common;

use common::{assert_close, clip_dir, device, reference};
use mmprobe_extract::clip::{LoadedClip, PatchCompute};
use mmprobe_extract::layers::{CpuLinear, with_cpu_linear};
use mmprobe_extract::{Capture, DType, SiteRequest};
use tch::Device;

const TOL: f64 = 1e-4;

fn check_model(name: &str) {
    let dir = clip_dir(name);
    let r = reference(&dir);
    let clip = LoadedClip::load(&dir, device(), DType::F32).unwrap();
    let m = &clip.model;
    let ids = r.tensor("input_ids").unwrap().to_device(device());
    let mask = r.tensor("attention_mask").unwrap().to_device(device());
    let pixels = r.tensor("pixel_values").unwrap().to_device(device());

    let n_text = m.config.text_config.num_hidden_layers;
    let n_vision = m.config.vision_config.num_hidden_layers;
    let mut text = Capture::new(SiteRequest::everything(n_text));
    tch::no_grad(|| m.encode_text(&ids, &mask, &mut text));
    let mut vision = Capture::new(SiteRequest::everything(n_vision));
    tch::no_grad(|| m.encode_image(&pixels, &mut vision));

    for (tower, got, n) in [("text", &text, n_text), ("vision", &vision, n_vision)] {
        assert_eq!(got.resid.len(), n + 1);
        for (l, h) in &got.resid {
            assert_close(
                &format!("{name} {tower} resid {l}"),
                h,
                &r.tensor(&format!("{tower}.resid.{l}")).unwrap(),
                TOL,
            );
        }
        for l in 1..=n {
            assert_close(
                &format!("{name} {tower} attn {l}"),
                &got.attn[&l],
                &r.tensor(&format!("{tower}.attn.{l}")).unwrap(),
                TOL,
            );
            assert_close(
                &format!("{name} {tower} mlp {l}"),
                &got.mlp[&l],
                &r.tensor(&format!("{tower}.mlp.{l}")).unwrap(),
                TOL,
            );
        }
        let pooled = got.pooled.as_ref().unwrap();
        assert_close(&format!("{name} {tower} pooled"), pooled, &r.tensor(&format!("{tower}.pooled")).unwrap(), TOL);
        let embeds = got.embeds.as_ref().unwrap();
        assert_close(&format!("{name} {tower} embeds"), embeds, &r.tensor(&format!("{tower}.embeds")).unwrap(), TOL);
    }
}

#[test]
fn tiny_a_matches_transformers() {
    check_model("tiny-a");
}

#[test]
fn tiny_b_bf16_sharded_legacy_eos_matches_transformers() {
    check_model("tiny-b");
}

/// The tiny models have fewer rows than oneDNN's threshold: forced here, so
/// that the path a large batch takes on a CPU is checked against transformers.
#[test]
fn every_linear_through_onednn_matches_transformers() {
    for name in ["tiny-a", "tiny-b"] {
        with_cpu_linear(CpuLinear::OneDnn, || check_model(name));
    }
}

#[test]
fn the_last_layer_at_cls_alone_matches_transformers() {
    for name in ["tiny-a", "tiny-b"] {
        let dir = clip_dir(name);
        let r = reference(&dir);
        let clip = LoadedClip::load(&dir, device(), DType::F32).unwrap();
        let pixels = r.tensor("pixel_values").unwrap().to_device(device());
        let n = clip.model.config.vision_config.num_hidden_layers;
        let req = SiteRequest { first_token_only: true, ..SiteRequest::everything(n) };
        let mut got = Capture::new(req);
        tch::no_grad(|| clip.model.encode_image(&pixels, &mut got));
        let tokens = clip.model.config.vision_config.num_patches() + 1;
        for l in 0..=n {
            // Only the last layer is cut to its first position: every other one feeds the next.
            let want = r.tensor(&format!("vision.resid.{l}")).unwrap();
            let width = if l == n { 1 } else { tokens };
            assert_eq!(got.resid[&l].size()[1], width, "{name} resid {l}");
            assert_close(&format!("{name} resid {l}"), &got.resid[&l], &want.narrow(1, 0, width), TOL);
        }
        for site in ["attn", "mlp"] {
            let h = if site == "attn" { &got.attn[&n] } else { &got.mlp[&n] };
            assert_eq!(h.size()[1], 1, "{name} {site} {n}");
            let want = r.tensor(&format!("vision.{site}.{n}")).unwrap().narrow(1, 0, 1);
            assert_close(&format!("{name} {site} {n}"), h, &want, TOL);
        }
        assert_close(&format!("{name} pooled"), got.pooled.as_ref().unwrap(), &r.tensor("vision.pooled").unwrap(), TOL);
        assert_close(&format!("{name} embeds"), got.embeds.as_ref().unwrap(), &r.tensor("vision.embeds").unwrap(), TOL);

        // The text tower pools at its EOS token: the flag never cuts it.
        let ids = r.tensor("input_ids").unwrap().to_device(device());
        let mask = r.tensor("attention_mask").unwrap().to_device(device());
        let nt = clip.model.config.text_config.num_hidden_layers;
        let mut text = Capture::new(SiteRequest { first_token_only: true, ..SiteRequest::everything(nt) });
        tch::no_grad(|| clip.model.encode_text(&ids, &mask, &mut text));
        assert_eq!(text.resid[&nt].size(), r.tensor(&format!("text.resid.{nt}")).unwrap().size(), "{name} text");
        assert_close(
            &format!("{name} text pooled"),
            text.pooled.as_ref().unwrap(),
            &r.tensor("text.pooled").unwrap(),
            TOL,
        );
    }
}

#[test]
fn every_patch_computation_matches_transformers() {
    let dir = clip_dir("tiny-a");
    let r = reference(&dir);
    let mut clip = LoadedClip::load(&dir, device(), DType::F32).unwrap();
    assert_eq!(clip.model.vision_model.patch_compute, PatchCompute::Matmul, "f32 loads exact");
    clip.set_allow_tf32(true);
    assert_eq!(clip.model.vision_model.patch_compute, PatchCompute::ConvTf32);
    let pixels = r.tensor("pixel_values").unwrap().to_device(device());
    let want = r.tensor("vision.resid.0").unwrap();
    // TF32 keeps 10 mantissa bits: its convolution is checked on the CPU only.
    let ways: &[PatchCompute] = match device() {
        Device::Cpu => &[PatchCompute::Matmul, PatchCompute::Conv, PatchCompute::ConvTf32],
        _ => &[PatchCompute::Matmul],
    };
    for &how in ways {
        clip.model.vision_model.patch_compute = how;
        let mut got = Capture::new(SiteRequest { resid: [0].into(), ..Default::default() });
        tch::no_grad(|| clip.model.encode_image(&pixels, &mut got));
        assert_close(&format!("{how:?} vision resid 0"), &got.resid[&0], &want, TOL);
    }
}

#[test]
fn only_requested_sites_are_kept() {
    let dir = clip_dir("tiny-a");
    let r = reference(&dir);
    let clip = LoadedClip::load(&dir, Device::Cpu, DType::F32).unwrap();
    let req = SiteRequest { resid: [2].into(), mlp: [1].into(), ..Default::default() };
    let mut got = Capture::new(req);
    tch::no_grad(|| clip.model.encode_image(&r.tensor("pixel_values").unwrap(), &mut got));
    assert_eq!(got.resid.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(got.mlp.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert!(got.attn.is_empty() && got.embeds.is_none());
}
