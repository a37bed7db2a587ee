//! LLaVA with a SigLIP vision tower against transformers'
//! LlavaForConditionalGeneration (scripts/fixtures/make_siglip.py): each
//! prompt's vision and decoder states as transformers gives them for that
//! prompt run alone, from one padded batch; the image features LLaVA splices
//! in (hidden_states[vision_feature_layer], patch 0 dropped under `default`
//! although SigLIP has no CLS); and an extraction into a store.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, device, device_choice, fixtures, max_abs_diff};
use mmprobe_extract::layers::{CpuLinear, with_cpu_linear};
use mmprobe_extract::llava::{FeatureSelect, LoadedLlava, PromptTokenizer, VisionConfig};
use mmprobe_extract::preprocess::{ImageProcessor, open_rgb};
use mmprobe_extract::weights::Checkpoint;
use mmprobe_extract::{
    Capture, DType, ExtractOptions, ModelInfo, Quiet, RunOptions, Selector, Site, SiteRequest, Tower, extract,
};
use mmprobe_store::Store;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;
const MODELS: [&str; 2] = ["llava-siglip-hub", "llava-siglip-model"];

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
fn the_config_reads_a_siglip_tower_and_its_feature_count() {
    for name in MODELS {
        let m = meta(name);
        let l = LoadedLlava::load(&dir(name), tch::Device::Cpu, DType::F32).unwrap();
        assert!(l.unused.is_empty(), "{name}: unused {:?}", l.unused);
        let c = &l.model.config;
        assert!(matches!(c.vision_config, VisionConfig::Siglip(_)), "{name}");
        assert!(!c.vision_config.has_cls());
        let patches = c.vision_config.tokens();
        let want = match c.vision_feature_select_strategy {
            FeatureSelect::Default => patches - 1,
            FeatureSelect::Full => patches,
        };
        assert_eq!((c.image_features(), c.image_seq_length), (want, want), "{name}");
        assert_eq!(c.image_seq_length, m["image_seq_length"].as_i64().unwrap());

        let info = ModelInfo::from_dir(&dir(name)).unwrap();
        let v = info.tower(Tower::Vision).unwrap();
        assert_eq!((v.max_tokens, v.cls), (patches, false));
        assert!(!info.fits(Selector::Cls, Tower::Vision, Site::Resid), "{name}: no CLS, no `cls`");
        assert!(info.fits(Selector::Mean, Tower::Vision, Site::Resid));
        assert!(!info.sites(Tower::Vision).contains(&Site::Embeds));
        assert_eq!(info.default_selectors[0], Selector::Mean);
        let said = info.details.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join("\n");
        assert!(said.contains("SigLIP") && said.contains("no CLS"), "{said}");
    }
}

#[test]
fn prompts_and_pixels_are_the_processors() {
    for name in MODELS {
        let m = meta(name);
        let r = reference(name);
        let l = LoadedLlava::load(&dir(name), tch::Device::Cpu, DType::F32).unwrap();
        let tok = tokenizer(name, &l);
        assert_eq!(tok.left_padding, m["padding_side"] == "left", "{name}");
        let ps = strings(&m["prompts"]);
        for (i, p) in ps.iter().enumerate() {
            let toks = tok.encode(p).unwrap();
            let want = Vec::<i64>::try_from(r.tensor(&format!("p{i}.input_ids")).unwrap()).unwrap();
            assert_eq!(toks.iter().map(|t| t.id as i64).collect::<Vec<_>>(), want, "{name} prompt {i} ids");
            assert_eq!(toks.iter().map(|t| t.text.clone()).collect::<Vec<_>>(), strings(&m["tokens"][i]));
        }
        let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
        let b = tok.encode_batch(&refs).unwrap();
        assert_eq!(max_abs_diff(&b.input_ids, &r.tensor("batch.input_ids").unwrap()), 0.0, "{name} batch ids");
        assert_eq!(max_abs_diff(&b.attention_mask, &r.tensor("batch.attention_mask").unwrap()), 0.0, "{name} mask");

        let proc = ImageProcessor::from_dir(&dir(name)).unwrap();
        for (i, f) in strings(&m["images"]).iter().enumerate() {
            let img = open_rgb(&fixtures().join("images").join(f)).unwrap();
            let got = Tensor::from_slice(&proc.process(&img));
            let want = r.tensor(&format!("p{i}.pixel_values")).unwrap().reshape([-1]);
            assert_eq!(max_abs_diff(&got, &want), 0.0, "{name} {f}: pixels");
        }
    }
}

fn check_states(name: &str, flip_padding: bool) {
    let m = meta(name);
    let r = reference(name);
    let l = LoadedLlava::load(&dir(name), device(), DType::F32).unwrap();
    let mut tok = tokenizer(name, &l);
    tok.left_padding ^= flip_padding;
    let ps = strings(&m["prompts"]);
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
    let feats = tch::no_grad(|| {
        let feats = model.encode_image(&px, &mut vision);
        let _last = model.decode(&ids, &mask, Some(&feats), &mut out);
        feats
    });
    let side = if tok.left_padding { "left" } else { "right" };
    let mut worst = 0f64;
    let mut check = |what: String, got: &Tensor, want: &Tensor| {
        worst = worst.max(max_abs_diff(got, want));
        assert_close(&what, got, want, TOL);
    };
    for i in 0..ps.len() as i64 {
        for lay in 0..=nv {
            let want = r.tensor(&format!("p{i}.vision.resid.{lay}")).unwrap();
            check(format!("{name} p{i} vision resid {lay}"), &vision.resid[&lay].get(i), &want);
        }
        let want = r.tensor(&format!("p{i}.image_features")).unwrap();
        check(format!("{name} p{i} image features"), &feats.get(i), &want);
        for lay in 0..=n {
            let want = r.tensor(&format!("p{i}.decoder.resid.{lay}")).unwrap();
            let got = unpadded(&out.resid[&lay], &mask, i);
            check(format!("{name} ({side} padded) p{i} decoder resid {lay}"), &got, &want);
        }
        for lay in 1..=n {
            for (site, map) in [("attn", &out.attn), ("mlp", &out.mlp)] {
                let want = r.tensor(&format!("p{i}.decoder.{site}.{lay}")).unwrap();
                let got = unpadded(&map[&lay], &mask, i);
                check(format!("{name} ({side} padded) p{i} decoder {site} {lay}"), &got, &want);
            }
        }
    }
    eprintln!("{name} ({side} padded): max |diff| {worst:.2e} over vision, image features and decoder states");
}

#[test]
fn a_padded_batch_gives_each_prompt_alone() {
    for name in MODELS {
        check_states(name, false);
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

fn write_dataset(tmp: &Path, name: &str) -> PathBuf {
    let m = meta(name);
    let mut csv = String::from("id,image,prompt,colour\n");
    for (i, (p, img)) in strings(&m["prompts"]).iter().zip(strings(&m["images"])).enumerate() {
        let path = fixtures().join("images").join(img);
        csv += &format!("s{i},{},\"{}\",{}\n", path.display(), p.replace('"', "\"\""), ["red", "blue"][i % 2]);
    }
    let path = tmp.join("data.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

#[test]
fn extraction_stores_vision_and_decoder_rows_like_transformers() {
    for name in MODELS {
        let m = meta(name);
        let r = reference(name);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("store");
        let opts = ExtractOptions {
            sites: vec![Site::Resid],
            run: RunOptions { device: device_choice(), dtype: DType::F32, batch_size: 2, ..Default::default() },
            chunk_size: 2,
            ..ExtractOptions::new(dir(name), write_dataset(tmp.path(), name), out.clone())
        };
        let s = extract(&opts, &Quiet).unwrap();
        assert!(s.store_complete && s.failed == 0, "{name}");
        let store = Store::open(&out).unwrap();
        let n = strings(&m["prompts"]).len();
        let flags: Vec<Vec<bool>> = m["image_flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect())
            .collect();
        let parts = store.partitions().unwrap();
        assert!(parts.iter().all(|p| p.selector != Selector::Cls), "{name}: no `cls` rows without a CLS token");
        let mut seen = 0;
        for p in parts {
            let a = store.load(p).unwrap();
            let (rows, d) = a.matrix.dim();
            assert_eq!((rows, a.sample.clone()), (n, (0..n as u32).collect::<Vec<_>>()), "{name} {p}");
            let got = Tensor::from_slice(a.matrix.as_slice().unwrap()).view([rows as i64, d as i64]);
            let want: Vec<Tensor> = (0..n)
                .map(|i| match (p.tower, p.selector) {
                    (Tower::Vision, Selector::Mean) => {
                        r.tensor(&format!("p{i}.vision.resid.{}", p.layer)).unwrap().mean_dim(0, false, Kind::Float)
                    }
                    (Tower::Decoder, sel) => {
                        let h = r.tensor(&format!("p{i}.decoder.resid.{}", p.layer)).unwrap();
                        let keep = |image: bool| {
                            let idx: Vec<i64> =
                                (0..flags[i].len()).filter(|&k| flags[i][k] == image).map(|k| k as i64).collect();
                            h.index_select(0, &Tensor::from_slice(&idx)).mean_dim(0, false, Kind::Float)
                        };
                        match sel {
                            Selector::Last => h.get(h.size()[0] - 1),
                            Selector::MeanImage => keep(true),
                            Selector::MeanText => keep(false),
                            Selector::Mean => h.mean_dim(0, false, Kind::Float),
                            other => panic!("{name}: unexpected {other}"),
                        }
                    }
                    other => panic!("{name}: unexpected {other:?}"),
                })
                .collect();
            assert_close(&format!("{name} {p}"), &got, &Tensor::stack(&want, 0), TOL);
            seen += 1;
        }
        let (nv, nt) = (
            ModelInfo::from_dir(&dir(name)).unwrap().tower(Tower::Vision).unwrap().layers,
            ModelInfo::from_dir(&dir(name)).unwrap().tower(Tower::Decoder).unwrap().layers,
        );
        // vision: mean per layer; decoder: mean, last, mean_image, mean_text per layer.
        assert_eq!(seen, (nv + 1) + 4 * (nt + 1), "{name}: partitions");
    }
}

#[test]
fn tokens_name_siglip_patches_and_the_cells_image_tokens_come_from() {
    // 4x4 patches, no CLS: `full` (hub) feeds all 16, `default` (model) drops patch 0.
    for (name, first) in [("llava-siglip-hub", 0), ("llava-siglip-model", 1)] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("store");
        let opts = ExtractOptions {
            sites: vec![Site::Resid],
            layers: "0".parse().unwrap(),
            selectors: vec![Selector::All],
            run: RunOptions { device: device_choice(), dtype: DType::F32, batch_size: 2, ..Default::default() },
            chunk_size: 2,
            ..ExtractOptions::new(dir(name), write_dataset(tmp.path(), name), out.clone())
        };
        extract(&opts, &Quiet).unwrap();
        let t = mmprobe_store::store::read_parquet(&out.join("tokens.parquet")).unwrap();
        let col = |c: &str| t.column(c).unwrap().clone();
        let (tower, sample, modality, token) = (col("tower"), col("sample"), col("modality"), col("token"));
        let (tower, sample) = (tower.str().unwrap(), sample.u32().unwrap());
        let (modality, token) = (modality.str().unwrap(), token.str().unwrap());
        let (row, c) = (col("grid_row"), col("grid_col"));
        let (row, c) = (row.i32().unwrap(), c.i32().unwrap());
        let of = |tw: &str, img: bool| -> Vec<usize> {
            (0..t.height())
                .filter(|&k| tower.get(k) == Some(tw) && sample.get(k) == Some(0))
                .filter(|&k| !img || modality.get(k) == Some("image"))
                .collect()
        };
        let vision = of("vision", false);
        assert_eq!(vision.len(), 16, "{name}: patches only");
        assert_eq!(token.get(vision[0]), Some("<patch 0,0>"), "{name}: a SigLIP tower has no CLS");
        assert_eq!((row.get(vision[5]), c.get(vision[5])), (Some(1), Some(1)));
        let image = of("decoder", true);
        assert_eq!(image.len(), 16 - first, "{name}");
        for (k, &i) in image.iter().enumerate() {
            let p = (k + first) as i32;
            assert_eq!((row.get(i), c.get(i)), (Some(p / 4), Some(p % 4)), "{name} image token {k}");
        }
    }
}
