//! SigLIP against transformers' SiglipModel, SiglipTokenizer / GemmaTokenizer
//! and SiglipImageProcessorPil (scripts/fixtures/make_siglip.py): every
//! hidden state and sublayer of both towers, both embeddings, the texts'
//! ids, the pixels, and an extraction into a store.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, device, device_choice, fixtures, max_abs_diff};
use mmprobe_extract::layers::{CpuLinear, with_cpu_linear};
use mmprobe_extract::preprocess::{ImageProcessor, open_rgb};
use mmprobe_extract::siglip::{LoadedSiglip, SiglipSpTokenizer};
use mmprobe_extract::tokenize::TextTokenizer;
use mmprobe_extract::weights::Checkpoint;
use mmprobe_extract::{
    Capture, DType, ExtractOptions, ModelInfo, Quiet, RunOptions, Selector, Site, SiteRequest, Tower, extract,
};
use mmprobe_store::{Partition, Store};
use tch::nn::Module;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;
const MODELS: [&str; 2] = ["siglip1-head", "siglip2-nohead"];

fn dir(name: &str) -> PathBuf {
    fixtures().join("siglip").join(name)
}

fn meta(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir(name).join("reference.json")).unwrap()).unwrap()
}

fn reference(name: &str) -> Checkpoint {
    let d = dir(name);
    Checkpoint::open_files(&d, [d.join("reference.safetensors")]).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|s| s.as_i64().unwrap()).collect()
}

fn tokenizer(name: &str, l: &LoadedSiglip) -> TextTokenizer {
    let t = &l.model.config.text_config;
    TextTokenizer::siglip_from_dir(&dir(name), t.max_position_embeddings as usize, t.pad_token_id.unwrap_or(0) as u32)
        .unwrap()
}

/// Every site of both towers of the model in `model_dir`, against the references of `name`.
fn check_states(name: &str, model_dir: &Path) {
    let r = reference(name);
    let l = LoadedSiglip::load(model_dir, device(), DType::F32).unwrap();
    assert!(l.unused.is_empty(), "{name}: unused tensors {:?}", l.unused);
    let m = &l.model;
    let ids = r.tensor("input_ids").unwrap().to_device(device());
    let mask = r.contains("attention_mask").then(|| r.tensor("attention_mask").unwrap().to_device(device()));
    assert_eq!(l.text_mask, mask.is_some(), "{name}: the text tower gets a mask exactly when the tokenizer gives one");
    let pixels = r.tensor("pixel_values").unwrap().to_device(device());
    let (nt, nv) = (m.config.text_config.num_hidden_layers, m.config.vision_config.num_hidden_layers);
    let mut text = Capture::new(SiteRequest::everything(nt));
    tch::no_grad(|| m.encode_text(&ids, mask.as_ref(), &mut text));
    let mut vision = Capture::new(SiteRequest::everything(nv));
    tch::no_grad(|| m.encode_image(&pixels, &mut vision));
    let mut worst = 0f64;
    let mut check = |what: String, got: &Tensor, key: &str| {
        let want = r.tensor(key).unwrap();
        worst = worst.max(max_abs_diff(got, &want));
        assert_close(&what, got, &want, TOL);
    };
    for (tower, cap, n) in [("text", &text, nt), ("vision", &vision, nv)] {
        assert_eq!(cap.resid.len(), n + 1, "{name} {tower}: N + 1 hidden states");
        for (l, h) in &cap.resid {
            check(format!("{name} {tower} resid {l}"), h, &format!("{tower}.resid.{l}"));
        }
        for l in 1..=n {
            check(format!("{name} {tower} attn {l}"), &cap.attn[&l], &format!("{tower}.attn.{l}"));
            check(format!("{name} {tower} mlp {l}"), &cap.mlp[&l], &format!("{tower}.mlp.{l}"));
        }
    }
    let last_text = tch::no_grad(|| m.text_model.final_layer_norm.forward(&text.resid[&nt]));
    check(format!("{name} text last_hidden_state"), &last_text, "text.last_hidden_state");
    let last_vision = tch::no_grad(|| m.vision_model.post_layernorm.forward(&vision.resid[&nv]));
    check(format!("{name} vision last_hidden_state"), &last_vision, "vision.last_hidden_state");
    let t = ids.size()[1];
    let eos = Vec::<i64>::try_from(text.pool_positions.as_ref().unwrap()).unwrap();
    assert!(eos.iter().all(|&p| p == t - 1), "{name}: the text tower pools the last position");
    check(format!("{name} text embeds"), text.embeds.as_ref().unwrap(), "text.embeds");
    if r.contains("vision.embeds") {
        check(format!("{name} vision embeds"), vision.embeds.as_ref().unwrap(), "vision.embeds");
        // The sigmoid logits transformers computes from both embeddings.
        let norm = |e: &Tensor| e / e.norm_scalaropt_dim(2, [-1], true);
        let (ti, vi) = (norm(text.embeds.as_ref().unwrap()), norm(vision.embeds.as_ref().unwrap()));
        let logits = vi.matmul(&ti.tr()) * m.logit_scale.exp() + &m.logit_bias;
        check(format!("{name} logits_per_image"), &logits, "logits_per_image");
    } else {
        assert!(vision.embeds.is_none() && vision.pooled.is_none(), "{name}: no head, no image embedding");
    }
    eprintln!("{name} ({}): max |diff| {worst:.2e} over every state and embedding", model_dir.display());
}

#[test]
fn both_towers_match_transformers() {
    for name in MODELS {
        check_states(name, &dir(name));
    }
}

/// oneDNN's linear, which a CPU batch of 1,024 rows or more takes, forced on the tiny models.
#[test]
fn every_linear_through_onednn_matches_transformers() {
    for name in MODELS {
        with_cpu_linear(CpuLinear::OneDnn, || check_states(name, &dir(name)));
    }
}

#[test]
fn the_siglip_prefixed_layout_loads_too() {
    // siglip1-head's flat keys under the base model's prefix (`siglip.vision_model.*`, ...).
    let name = MODELS[0];
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir(name)).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let ck = Checkpoint::open(&dir(name)).unwrap();
    let renamed: Vec<(String, Tensor)> =
        ck.names().map(|k| (format!("siglip.{k}"), ck.tensor(k).unwrap())).collect::<Vec<_>>();
    Tensor::write_safetensors(&renamed, tmp.path().join("model.safetensors")).unwrap();
    check_states(name, tmp.path());
}

#[test]
fn texts_tokenize_as_transformers_does() {
    for name in MODELS {
        let m = meta(name);
        let l = LoadedSiglip::load(&dir(name), tch::Device::Cpu, DType::F32).unwrap();
        let tok = tokenizer(name, &l);
        let max_len = m["max_length"].as_u64().unwrap() as i64;
        for case in m["tokenizer"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let b = tok.encode_batch(&[text]).unwrap();
            assert_eq!(b.input_ids.size(), [1, max_len], "{name} {text:?}: padded to max_length");
            let got = Vec::<i64>::try_from(b.input_ids.reshape([-1])).unwrap();
            assert_eq!(got, ints(&case["input_ids"]), "{name} {text:?}: ids");
            let plain = ints(&case["ids"]);
            let real = Vec::<i64>::try_from(b.attention_mask.reshape([-1])).unwrap();
            let n = plain.len().min(max_len as usize);
            assert_eq!(real.iter().sum::<i64>() as usize, n, "{name} {text:?}: real tokens");
            if !case["attention_mask"].is_null() {
                assert_eq!(real, ints(&case["attention_mask"]), "{name} {text:?}: mask");
            }
            if plain.len() <= max_len as usize {
                let toks: Vec<String> = b.tokens[0].iter().map(|t| t.1.clone()).collect();
                assert_eq!(toks, strings(&case["tokens"]), "{name} {text:?}: token texts");
            }
            assert_eq!(b.truncated, usize::from(plain.len() > max_len as usize), "{name} {text:?}: truncated");
        }
        // The model's batch: every text padded to max_length in one call.
        let r = reference(name);
        let texts = strings(&m["texts"]);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let b = tok.encode_batch(&refs).unwrap();
        assert!(b.input_ids.equal(&r.tensor("input_ids").unwrap()), "{name}: batch ids");
        if r.contains("attention_mask") {
            assert!(b.attention_mask.equal(&r.tensor("attention_mask").unwrap()), "{name}: batch mask");
        }
    }
}

#[test]
fn siglip1_canonicalises_as_its_python_tokenizer() {
    let sp = SiglipSpTokenizer::from_dir(&dir("siglip1-head")).unwrap();
    for case in meta("siglip1-head")["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let input = format!("\u{2581}{}", text.replace('\u{2581}', " "));
        assert_eq!(sp.canonicalize(&input), case["canonical"].as_str().unwrap(), "{text:?}");
    }
}

#[test]
fn pixels_are_the_processors_bit_for_bit() {
    for name in MODELS {
        let m = meta(name);
        let r = reference(name);
        let proc = ImageProcessor::from_dir(&dir(name)).unwrap();
        let (h, w) = proc.output_size();
        let (want, want_raw) = (r.tensor("pixel_values").unwrap(), r.tensor("pixels_unnormalised").unwrap());
        for (i, file) in strings(&m["images"]).iter().enumerate() {
            let img = open_rgb(&fixtures().join("images").join(file)).unwrap();
            let got = Tensor::from_slice(&proc.process(&img)).view([3, h as i64, w as i64]);
            let got_raw = Tensor::from_slice(&proc.unnormalised(&img)).view([3, h as i64, w as i64]);
            let (d, d_raw) = (max_abs_diff(&got, &want.get(i as i64)), max_abs_diff(&got_raw, &want_raw.get(i as i64)));
            // PNGs and the EXIF-rotated JPEG alike (mmprobe-jpeg decodes as Pillow does).
            assert_eq!((d, d_raw), (0.0, 0.0), "{name} {file}: pixels differ");
        }
    }
}

#[test]
fn a_padded_batch_gives_each_text_alone() {
    for name in MODELS {
        let r = reference(name);
        let l = LoadedSiglip::load(&dir(name), device(), DType::F32).unwrap();
        let tok = tokenizer(name, &l);
        let texts = strings(&meta(name)["texts"]);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mask_of =
            |b: &mmprobe_extract::tokenize::TokenBatch| l.text_mask.then(|| b.attention_mask.to_device(device()));
        let b = tok.encode_batch(&refs).unwrap();
        let mut batch = Capture::new(SiteRequest::everything(l.model.config.text_config.num_hidden_layers));
        tch::no_grad(|| l.model.encode_text(&b.input_ids.to_device(device()), mask_of(&b).as_ref(), &mut batch));
        let alone = r.tensor("text.alone.embeds").unwrap();
        assert_close(&format!("{name} batch vs transformers alone"), batch.embeds.as_ref().unwrap(), &alone, TOL);
        for (i, t) in refs.iter().enumerate() {
            let one = tok.encode_batch(&[t]).unwrap();
            let mut cap = Capture::new(SiteRequest::everything(l.model.config.text_config.num_hidden_layers));
            tch::no_grad(|| l.model.encode_text(&one.input_ids.to_device(device()), mask_of(&one).as_ref(), &mut cap));
            for (layer, h) in &cap.resid {
                assert_close(
                    &format!("{name} text {i} alone resid {layer}"),
                    &h.get(0),
                    &batch.resid[layer].get(i as i64),
                    TOL,
                );
            }
            let e = cap.embeds.as_ref().unwrap().get(0);
            assert_close(
                &format!("{name} text {i} alone embeds"),
                &e,
                &batch.embeds.as_ref().unwrap().get(i as i64),
                TOL,
            );
        }
        // The same ids with and without a padding mask: transformers' pooled rows differ, and so do ours.
        let ids = r.tensor("input_ids").unwrap().to_device(device());
        let pad = l.model.config.text_config.pad_token_id.unwrap_or(0);
        let full_mask = match r.contains("attention_mask") {
            true => r.tensor("attention_mask").unwrap(),
            false => r.tensor("input_ids").unwrap().ne(pad).to_kind(Kind::Int64),
        };
        for (variant, m) in [("masked", Some(full_mask.to_device(device()))), ("unmasked", None)] {
            let mut cap = Capture::new(SiteRequest::embeds());
            tch::no_grad(|| l.model.encode_text(&ids, m.as_ref(), &mut cap));
            let want = r.tensor(&format!("text.{variant}.embeds")).unwrap();
            assert_close(&format!("{name} text {variant}"), cap.embeds.as_ref().unwrap(), &want, TOL);
        }
    }
}

#[test]
fn inspect_describes_no_cls_and_the_head() {
    for name in MODELS {
        let info = ModelInfo::from_dir(&dir(name)).unwrap();
        let head = meta(name)["vision_use_head"].as_bool().unwrap();
        assert_eq!(info.family, "siglip");
        let v = info.tower(Tower::Vision).unwrap();
        assert!(!v.cls);
        assert!(!info.fits(Selector::Cls, Tower::Vision, Site::Resid), "{name}: no CLS token, no `cls`");
        assert!(info.fits(Selector::Mean, Tower::Vision, Site::Resid));
        assert!(info.fits(Selector::Eos, Tower::Text, Site::Resid));
        assert_eq!(info.sites(Tower::Vision).contains(&Site::Embeds), head, "{name}: vision embeds iff the head");
        assert!(info.sites(Tower::Text).contains(&Site::Embeds));
        assert_eq!(info.default_selectors, [Selector::Mean, Selector::Eos, Selector::Pooled]);
        let said = info.details.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join("\n");
        assert!(said.contains("no CLS token"), "{said}");
        assert_eq!(said.contains("no image embeds"), !head, "{said}");
    }
}

fn write_dataset(tmp: &Path, name: &str, rows: usize) -> PathBuf {
    let m = meta(name);
    let (images, texts) = (strings(&m["images"]), strings(&m["texts"]));
    let mut csv = String::from("id,image,text,colour\n");
    for i in 0..rows {
        let img = fixtures().join("images").join(&images[i]);
        csv += &format!("s{i},{},\"{}\",{}\n", img.display(), texts[i].replace('"', "\"\""), ["red", "blue"][i % 2]);
    }
    let path = tmp.join("data.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

fn rows(store: &Store, p: Partition) -> (Vec<i32>, Tensor) {
    let a = store.load(p).unwrap();
    let (n, d) = a.matrix.dim();
    assert_eq!(a.sample, (0..n as u32).collect::<Vec<_>>(), "{p}: one row per sample, in order");
    (a.pos, Tensor::from_slice(a.matrix.as_slice().unwrap()).view([n as i64, d as i64]))
}

#[test]
fn extraction_stores_the_default_selectors_as_transformers_computes_them() {
    for name in MODELS {
        let m = meta(name);
        let r = reference(name);
        let n = 5; // the reference's texts, with its first images
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("store");
        let opts = ExtractOptions {
            sites: vec![Site::Resid, Site::Embeds],
            run: RunOptions { device: device_choice(), dtype: DType::F32, batch_size: 2, ..Default::default() },
            chunk_size: 3,
            ..ExtractOptions::new(dir(name), write_dataset(tmp.path(), name, n), out.clone())
        };
        let s = extract(&opts, &Quiet).unwrap();
        assert!(s.store_complete && s.failed == 0, "{name}");
        assert!(s.unused_tensors.is_empty(), "{name}: {:?}", s.unused_tensors);
        let store = Store::open(&out).unwrap();
        let head = m["vision_use_head"].as_bool().unwrap();
        let max_len = m["max_length"].as_i64().unwrap();
        let info = ModelInfo::from_dir(&dir(name)).unwrap();
        let (nv, nt) = (info.tower(Tower::Vision).unwrap().layers, info.tower(Tower::Text).unwrap().layers);
        let lens: Vec<i64> = m["tokenizer"].as_array().unwrap()[..n]
            .iter()
            .map(|c| (c["ids"].as_array().unwrap().len() as i64).min(max_len))
            .collect();
        let mut parts = store.partitions().unwrap();
        parts.sort();
        let mut want_parts: Vec<Partition> = (0..=nv)
            .map(|layer| Partition { tower: Tower::Vision, site: Site::Resid, layer, selector: Selector::Mean })
            .chain((0..=nt).flat_map(|layer| {
                [Selector::Eos, Selector::Mean].map(|selector| Partition {
                    tower: Tower::Text,
                    site: Site::Resid,
                    layer,
                    selector,
                })
            }))
            .chain([Partition { tower: Tower::Text, site: Site::Embeds, layer: 0, selector: Selector::Pooled }])
            .collect();
        if head {
            want_parts.push(Partition {
                tower: Tower::Vision,
                site: Site::Embeds,
                layer: 0,
                selector: Selector::Pooled,
            });
        }
        want_parts.sort();
        assert_eq!(parts, want_parts, "{name}: the default selectors where they fit");
        for p in parts {
            let (pos, got) = rows(&store, p);
            let label = format!("{name} {p}");
            let want = match (p.tower, p.site, p.selector) {
                (t, Site::Embeds, _) => r.tensor(&format!("{t}.embeds")).unwrap().narrow(0, 0, n as i64),
                (Tower::Vision, _, Selector::Mean) => {
                    let h = r.tensor(&format!("vision.resid.{}", p.layer)).unwrap().narrow(0, 0, n as i64);
                    h.mean_dim(1, false, Kind::Float)
                }
                (Tower::Text, _, Selector::Eos) => {
                    assert_eq!(pos, vec![max_len as i32 - 1; n], "{label}: eos is the last position");
                    r.tensor(&format!("text.resid.{}", p.layer)).unwrap().select(1, max_len - 1)
                }
                (Tower::Text, _, Selector::Mean) => {
                    let h = r.tensor(&format!("text.resid.{}", p.layer)).unwrap();
                    let means: Vec<Tensor> =
                        (0..n).map(|i| h.get(i as i64).narrow(0, 0, lens[i]).mean_dim(0, false, Kind::Float)).collect();
                    Tensor::stack(&means, 0)
                }
                other => panic!("{label}: unexpected {other:?}"),
            };
            assert_close(&label, &got, &want, TOL);
        }
    }
}

#[test]
fn cls_on_a_vision_tower_without_one_is_refused_before_anything_runs() {
    let name = MODELS[0];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let opts = ExtractOptions {
        towers: Some(vec![Tower::Vision]),
        sites: vec![Site::Resid],
        selectors: vec![Selector::Cls],
        run: RunOptions { device: device_choice(), dtype: DType::F32, batch_size: 2, ..Default::default() },
        chunk_size: 3,
        ..ExtractOptions::new(dir(name), write_dataset(tmp.path(), name, 3), out.clone())
    };
    let e = extract(&opts, &Quiet).unwrap_err().to_string();
    assert!(e.contains("'cls'") && !e.contains('\n'), "{e}");
    assert!(!out.exists(), "nothing is written");
    // Asked for with another selector that fits, `cls` still fits nothing there: refused too.
    let mut both = opts.clone();
    both.selectors = vec![Selector::Cls, Selector::Mean];
    assert!(extract(&both, &Quiet).unwrap_err().to_string().contains("'cls'"));
}
