//! LLaVA against transformers' LlavaForConditionalGeneration
//! (scripts/fixtures/make_llava.py): a padded batch of prompts of different
//! lengths must reproduce every hidden state of each prompt run alone.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, device, device_choice, fixtures, max_abs_diff};
use mmprobe_extract::layers::{CpuLinear, with_cpu_linear};
use mmprobe_extract::llava::{LoadedLlava, PromptTokenizer};
use mmprobe_extract::preprocess::{ImageProcessor, open_rgb};
use mmprobe_extract::weights::Checkpoint;
use mmprobe_extract::{Capture, DType, ExtractOptions, Quiet, RunOptions, Selector, Site, SiteRequest, Tower, extract};
use mmprobe_store::{Partition, Store};
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;
const MODELS: [&str; 2] = ["llava-gqa", "llava-hub"];

fn dir(name: &str) -> PathBuf {
    fixtures().join("llava").join(name)
}

fn meta(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir(name).join("reference.json")).unwrap()).unwrap()
}

fn reference(name: &str) -> Checkpoint {
    let d = dir(name);
    Checkpoint::open_files(&d, [d.join("reference.safetensors")]).unwrap()
}

fn prompts(m: &serde_json::Value) -> Vec<String> {
    m["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

fn tokenizer(name: &str, l: &LoadedLlava) -> PromptTokenizer {
    let c = &l.model.config;
    PromptTokenizer::from_dir(&dir(name), c.image_token_index, c.image_seq_length, c.text_config.pad_token_id).unwrap()
}

/// Row `i`'s real positions of a padded [B, T, D] state, as [T_i, D].
fn unpadded(h: &Tensor, mask: &Tensor, i: i64) -> Tensor {
    let keep = mask.get(i).ne(0).nonzero().squeeze_dim(1).to_device(h.device());
    h.get(i).index_select(0, &keep)
}

#[test]
fn prompts_expand_and_pad_like_the_processor() {
    for name in MODELS {
        let m = meta(name);
        let r = reference(name);
        let l = LoadedLlava::load(&dir(name), tch::Device::Cpu, DType::F32).unwrap();
        let tok = tokenizer(name, &l);
        assert_eq!(tok.left_padding, m["padding_side"] == "left", "{name}");
        let ps = prompts(&m);
        for (i, p) in ps.iter().enumerate() {
            let toks = tok.encode(p).unwrap();
            let want = Vec::<i64>::try_from(r.tensor(&format!("p{i}.input_ids")).unwrap()).unwrap();
            assert_eq!(toks.iter().map(|t| t.id as i64).collect::<Vec<_>>(), want, "{name} prompt {i} ids");
            let texts: Vec<&str> = m["tokens"][i].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
            assert_eq!(toks.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), texts, "{name} prompt {i} tokens");
        }
        let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
        let b = tok.encode_batch(&refs).unwrap();
        assert_eq!(max_abs_diff(&b.input_ids, &r.tensor("batch.input_ids").unwrap()), 0.0, "{name} batch ids");
        assert_eq!(max_abs_diff(&b.attention_mask, &r.tensor("batch.attention_mask").unwrap()), 0.0, "{name} mask");

        let proc = ImageProcessor::from_dir(&dir(name)).unwrap();
        for (i, f) in m["images"].as_array().unwrap().iter().enumerate() {
            let img = open_rgb(&fixtures().join("images").join(f.as_str().unwrap())).unwrap();
            let got = Tensor::from_slice(&proc.process(&img));
            let want = r.tensor(&format!("p{i}.pixel_values")).unwrap().reshape([-1]);
            assert!(max_abs_diff(&got, &want) < 1e-5, "{name} pixels {i}");
        }
    }
}

fn check_states(name: &str, flip_padding: bool) {
    let m = meta(name);
    let r = reference(name);
    let l = LoadedLlava::load(&dir(name), device(), DType::F32).unwrap();
    let mut tok = tokenizer(name, &l);
    tok.left_padding ^= flip_padding;
    let ps = prompts(&m);
    let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
    let b = tok.encode_batch(&refs).unwrap();
    let px: Vec<Tensor> = (0..ps.len()).map(|i| r.tensor(&format!("p{i}.pixel_values")).unwrap()).collect();
    let px = Tensor::cat(&px, 0).to_device(device());
    let model = &l.model;
    let nv = model.config.vision_config.num_hidden_layers();
    let n = model.config.text_config.num_hidden_layers;
    let mut vision = Capture::new(SiteRequest { resid: (0..=nv).collect(), ..Default::default() });
    let mut out = Capture::new(SiteRequest { embeds: false, ..SiteRequest::everything(n) });
    let (ids, mask) = (b.input_ids.to_device(device()), b.attention_mask.to_device(device()));
    let _last = tch::no_grad(|| {
        let feats = model.encode_image(&px, &mut vision);
        model.decode(&ids, &mask, Some(&feats), &mut out)
    });
    let side = if tok.left_padding { "left" } else { "right" };
    for i in 0..ps.len() as i64 {
        for lay in 0..=nv {
            let want = r.tensor(&format!("p{i}.vision.resid.{lay}")).unwrap();
            assert_close(&format!("{name} p{i} vision resid {lay}"), &vision.resid[&lay].get(i), &want, TOL);
        }
        for lay in 0..=n {
            let want = r.tensor(&format!("p{i}.decoder.resid.{lay}")).unwrap();
            let got = unpadded(&out.resid[&lay], &mask, i);
            assert_close(&format!("{name} ({side} padded) p{i} decoder resid {lay}"), &got, &want, TOL);
        }
        for lay in 1..=n {
            for (site, map) in [("attn", &out.attn), ("mlp", &out.mlp)] {
                let want = r.tensor(&format!("p{i}.decoder.{site}.{lay}")).unwrap();
                let got = unpadded(&map[&lay], &mask, i);
                assert_close(&format!("{name} ({side} padded) p{i} decoder {site} {lay}"), &got, &want, TOL);
            }
        }
    }
}

#[test]
fn padded_batch_matches_each_prompt_alone() {
    for name in MODELS {
        check_states(name, false);
    }
}

#[test]
fn the_other_padding_side_gives_the_same_states() {
    for name in MODELS {
        check_states(name, true);
    }
}

/// oneDNN's linear, which a CPU batch of 1,024 rows or more takes, forced on the tiny models.
#[test]
fn every_linear_through_onednn_matches_transformers() {
    for name in MODELS {
        with_cpu_linear(CpuLinear::OneDnn, || check_states(name, false));
    }
}

#[test]
fn a_vision_tower_read_at_cls_alone_gives_the_decoder_the_same_features() {
    // llava-gqa's feature layer is -2: its last vision layer may run at CLS alone.
    // llava-hub reads layer -1 itself, so its last layer stays whole.
    for (name, cut) in [("llava-gqa", true), ("llava-hub", false)] {
        let r = reference(name);
        let l = LoadedLlava::load(&dir(name), device(), DType::F32).unwrap();
        let model = &l.model;
        let n = prompts(&meta(name)).len();
        let px: Vec<Tensor> = (0..n).map(|i| r.tensor(&format!("p{i}.pixel_values")).unwrap()).collect();
        let px = Tensor::cat(&px, 0).to_device(device());
        let nv = model.config.vision_config.num_hidden_layers();
        let whole = SiteRequest { resid: (0..=nv).collect(), ..Default::default() };
        let mut at_cls = Capture::new(SiteRequest { first_token_only: true, ..whole.clone() });
        let mut every = Capture::new(whole);
        let (a, b) = tch::no_grad(|| (model.encode_image(&px, &mut at_cls), model.encode_image(&px, &mut every)));
        assert!(a.equal(&b), "{name}: the projected features are the same");
        let tokens = every.resid[&nv].size()[1];
        assert_eq!(at_cls.resid[&nv].size()[1], if cut { 1 } else { tokens }, "{name}: last layer's width");
        for i in 0..n as i64 {
            let want = r.tensor(&format!("p{i}.vision.resid.{nv}")).unwrap().get(0);
            assert_close(
                &format!("{name} p{i} CLS of vision resid {nv}"),
                &at_cls.resid[&nv].get(i).get(0),
                &want,
                TOL,
            );
        }
    }
}

fn write_dataset(dir_: &Path, name: &str) -> PathBuf {
    let m = meta(name);
    let mut csv = String::from("id,image,prompt,colour\n");
    for (i, (p, img)) in prompts(&m).iter().zip(m["images"].as_array().unwrap()).enumerate() {
        let path = fixtures().join("images").join(img.as_str().unwrap());
        csv += &format!("s{i},{},\"{}\",{}\n", path.display(), p.replace('"', "\"\""), ["red", "blue"][i % 2]);
    }
    let path = dir_.join("data.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

#[test]
fn extraction_stores_tokens_states_and_logit_lens_like_transformers() {
    for name in MODELS {
        let m = meta(name);
        let r = reference(name);
        let tmp = tempfile::tempdir().unwrap();
        let store_dir = tmp.path().join("store");
        let opts = ExtractOptions {
            towers: Some(vec![Tower::Vision, Tower::Decoder]),
            sites: vec![Site::Resid],
            selectors: vec![Selector::Cls, Selector::Last, Selector::MeanImage, Selector::MeanText, Selector::All],
            run: RunOptions { device: device_choice(), dtype: DType::F32, batch_size: 2, ..Default::default() },
            chunk_size: 2,
            logit_lens: Some(5),
            ..ExtractOptions::new(dir(name), write_dataset(tmp.path(), name), store_dir.clone())
        };
        extract(&opts, &Quiet).unwrap();
        let store = Store::open(&store_dir).unwrap();

        // tokens.parquet: the processor's token texts and image flags, per sample and position.
        let tokens = mmprobe_store::store::read_parquet(&store_dir.join("tokens.parquet")).unwrap();
        let (tower, sample) =
            (tokens.column("tower").unwrap().str().unwrap(), tokens.column("sample").unwrap().u32().unwrap());
        let (pos, text) =
            (tokens.column("pos").unwrap().i32().unwrap(), tokens.column("token").unwrap().str().unwrap());
        let modality = tokens.column("modality").unwrap().str().unwrap();
        // Grid cells: a 4x4 patch grid in both fixtures. Under `full` (llava-hub)
        // image token 0 is the CLS and token k the patch k - 1; under `default`
        // (llava-gqa) token k is patch k. Vision rows: CLS at 0, then patches.
        let (grow, gcol) =
            (tokens.column("grid_row").unwrap().i32().unwrap(), tokens.column("grid_col").unwrap().i32().unwrap());
        let full = name == "llava-hub";
        for i in 0..3u32 {
            let image: Vec<usize> = (0..tokens.height())
                .filter(|&k| {
                    tower.get(k) == Some("decoder") && sample.get(k) == Some(i) && modality.get(k) == Some("image")
                })
                .collect();
            assert_eq!(image.len(), if full { 17 } else { 16 }, "{name}");
            for (t, &k) in image.iter().enumerate() {
                let patch = t as i32 - full as i32;
                let want = (patch >= 0).then_some((patch / 4, patch % 4));
                let got = grow.get(k).zip(gcol.get(k));
                assert_eq!(got, want, "{name} sample {i} image token {t}");
            }
            let vision: Vec<usize> =
                (0..tokens.height()).filter(|&k| tower.get(k) == Some("vision") && sample.get(k) == Some(i)).collect();
            assert_eq!(vision.len(), 17, "{name}: CLS and 16 patches");
            assert_eq!((text.get(vision[0]), grow.get(vision[0])), (Some("<cls>"), None));
            assert_eq!(
                (text.get(vision[6]), grow.get(vision[6]), gcol.get(vision[6])),
                (Some("<patch 1,1>"), Some(1), Some(1))
            );
        }
        for i in 0..3u32 {
            let rows: Vec<usize> =
                (0..tokens.height()).filter(|&k| tower.get(k) == Some("decoder") && sample.get(k) == Some(i)).collect();
            let want_tokens = m["tokens"][i as usize].as_array().unwrap();
            let want_flags = m["image_flags"][i as usize].as_array().unwrap();
            assert_eq!(rows.len(), want_tokens.len(), "{name} sample {i} token count");
            for (j, &k) in rows.iter().enumerate() {
                assert_eq!(pos.get(k), Some(j as i32));
                assert_eq!(text.get(k), want_tokens[j].as_str(), "{name} sample {i} pos {j}");
                let flag = if want_flags[j].as_bool().unwrap() { "image" } else { "text" };
                assert_eq!(modality.get(k), Some(flag), "{name} sample {i} pos {j}");
            }
        }

        // `all` rows hold every position's state, positions never shifted by padding.
        let layers = reference_layers(&r);
        for layer in 0..=layers {
            let acts = store
                .load(Partition { tower: Tower::Decoder, site: Site::Resid, layer, selector: Selector::All })
                .unwrap();
            for i in 0..3u32 {
                let rows: Vec<usize> = (0..acts.sample.len()).filter(|&k| acts.sample[k] == i).collect();
                let width = acts.matrix.ncols();
                let pos: Vec<i32> = rows.iter().map(|&k| acts.pos[k]).collect();
                assert_eq!(pos, (0..rows.len() as i32).collect::<Vec<_>>(), "{name} sample {i} positions");
                let got: Vec<f32> = rows.iter().flat_map(|&k| acts.matrix.row(k).to_vec()).collect();
                let got = Tensor::from_slice(&got).view([rows.len() as i64, width as i64]);
                let want = r.tensor(&format!("p{i}.decoder.resid.{layer}")).unwrap();
                assert_close(&format!("{name} store all resid {layer} sample {i}"), &got, &want, TOL);
            }
        }

        // Logit lens: transformers' top-5 next tokens per layer and selector.
        let lens = mmprobe_store::store::read_parquet(&store_dir.join("logit_lens.parquet")).unwrap();
        let col_u32 = |c: &str| lens.column(c).unwrap().u32().unwrap().clone();
        let (ls, ll, lr) = (col_u32("sample"), col_u32("layer"), col_u32("rank"));
        let lsel = lens.column("selector").unwrap().str().unwrap();
        let lid = lens.column("token_id").unwrap().i64().unwrap();
        for i in 0..3u32 {
            for sel in ["last", "mean_image", "mean_text"] {
                let want = r.tensor(&format!("p{i}.lens.{sel}.top5")).unwrap().to_kind(Kind::Int64);
                for layer in 0..=layers {
                    let mut got: Vec<(u32, i64)> = (0..lens.height())
                        .filter(|&k| {
                            ls.get(k) == Some(i) && ll.get(k) == Some(layer as u32) && lsel.get(k) == Some(sel)
                        })
                        .map(|k| (lr.get(k).unwrap(), lid.get(k).unwrap()))
                        .collect();
                    got.sort();
                    let got: Vec<i64> = got.into_iter().map(|(_, id)| id).collect();
                    let want = Vec::<i64>::try_from(want.get(layer as i64)).unwrap();
                    assert_eq!(got, want, "{name} sample {i} {sel} layer {layer} top-5");
                }
            }
        }
    }
}

/// The decoder's layer count, read off the reference's keys.
fn reference_layers(r: &Checkpoint) -> usize {
    (0..).take_while(|l| r.contains(&format!("p0.decoder.resid.{l}"))).count() - 1
}

#[test]
fn a_default_tower_no_selector_fits_is_left_out_and_said() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let opts = ExtractOptions {
        sites: vec![Site::Resid],
        selectors: vec![Selector::Last, Selector::MeanImage, Selector::MeanText],
        run: RunOptions { device: device_choice(), dtype: DType::F32, batch_size: 2, ..Default::default() },
        chunk_size: 2,
        ..ExtractOptions::new(dir(MODELS[0]), write_dataset(tmp.path(), MODELS[0]), out.clone())
    };
    let s = extract(&opts, &Quiet).unwrap();
    let notes = s.notes.join("\n");
    assert!(notes.contains("vision tower") && notes.contains("no requested selector fits"), "{notes}");
    let store = Store::open(&out).unwrap();
    let spec = store.manifest.as_ref().unwrap().extraction.clone().unwrap();
    assert_eq!(spec.sites.keys().collect::<Vec<_>>(), ["decoder"], "the manifest lists what the store holds");
    // Named, the same tower is an error.
    let mut named = opts.clone();
    (named.towers, named.out) = (Some(vec![Tower::Vision, Tower::Decoder]), tmp.path().join("s2"));
    let e = extract(&named, &Quiet).unwrap_err().to_string();
    assert!(e.contains("vision") && e.contains("no requested selector fits"), "{e}");
}
