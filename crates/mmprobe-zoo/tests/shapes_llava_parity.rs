//! The committed shapes-llava, run by mmprobe, against transformers'
//! LlavaForConditionalGeneration and LlavaProcessor on the same checkpoint
//! (scripts/fixtures/make_shapes_llava_reference.py): prompts, decoder states
//! through extraction, next tokens, and greedy answers on a trained model.

use std::path::PathBuf;

use mmprobe_extract::llava::{LoadedLlava, PromptTokenizer};
use mmprobe_extract::preprocess::{ImageProcessor, open_rgb};
use mmprobe_extract::weights::Checkpoint;
use mmprobe_extract::{
    Capture, DType, DeviceChoice, ExtractOptions, Quiet, RunOptions, Selector, Site, Tower, extract,
};
use mmprobe_store::dataset::Dataset;
use mmprobe_store::{Partition, Store};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where extraction runs: `MMPROBE_TEST_DEVICE` (e.g. `cuda:0`), else the CPU.
fn test_device() -> DeviceChoice {
    match std::env::var("MMPROBE_TEST_DEVICE") {
        Ok(d) => d.parse().unwrap_or_else(|e| panic!("MMPROBE_TEST_DEVICE={d}: {e}")),
        Err(_) => DeviceChoice::Cpu,
    }
}

fn model_dir() -> PathBuf {
    root().join("datasets/models/shapes-llava")
}

fn data() -> PathBuf {
    root().join("datasets/shapes/data.csv")
}

fn meta() -> serde_json::Value {
    let dir = root().join("scripts/fixtures/shapes-llava");
    serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap()
}

fn reference() -> Checkpoint {
    let dir = root().join("scripts/fixtures/shapes-llava");
    let sha = mmprobe_store::manifest::sha256_file(&model_dir().join("model.safetensors")).unwrap();
    assert_eq!(
        meta()["model_sha256"].as_str().unwrap(),
        sha,
        "the reference was made for other weights: rerun scripts/fixtures/make_shapes_llava_reference.py"
    );
    Checkpoint::open_files(&dir, [dir.join("reference.safetensors")]).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn prompts(ds: &Dataset) -> Vec<String> {
    ds.prompts.as_ref().unwrap().iter().map(|p| p.clone().unwrap()).collect()
}

fn tokenizer(l: &LoadedLlava) -> PromptTokenizer {
    let c = &l.model.config;
    PromptTokenizer::from_dir(&model_dir(), c.image_token_index, c.image_seq_length, c.text_config.pad_token_id)
        .unwrap()
}

#[test]
fn prompts_pad_like_the_llava_processor() {
    let r = reference();
    let ds = Dataset::open(&data()).unwrap();
    let l = LoadedLlava::load(&model_dir(), Device::Cpu, DType::F32).unwrap();
    let tok = tokenizer(&l);
    assert!(tok.left_padding, "tokenizer_config.json asks for left padding");
    let p = prompts(&ds);
    let refs: Vec<&str> = p.iter().map(String::as_str).collect();
    let b = tok.encode_batch(&refs).unwrap();
    assert_eq!(max_abs_diff(&b.input_ids, &r.tensor("input_ids").unwrap()), 0.0);
    assert_eq!(max_abs_diff(&b.attention_mask, &r.tensor("attention_mask").unwrap()), 0.0);
    assert!(b.tokens.iter().flatten().all(|t| t.text != "<unk>"), "a prompt word is missing from the vocabulary");
}

#[test]
fn extracted_decoder_states_and_next_tokens_match_transformers() {
    let r = reference();
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let opts = ExtractOptions {
        towers: Some(vec![Tower::Decoder]),
        sites: vec![Site::Resid],
        selectors: vec![Selector::Last, Selector::MeanImage, Selector::MeanText],
        run: RunOptions { device: test_device(), dtype: DType::F32, batch_size: 64, ..Default::default() },
        logit_lens: Some(1),
        ..ExtractOptions::new(model_dir(), data(), store_dir.clone())
    };
    extract(&opts, &Quiet).unwrap();
    let store = Store::open(&store_dir).unwrap();
    let mut layers = 0;
    for (selector, key) in [
        (Selector::Last, "decoder.resid.last"),
        (Selector::MeanImage, "decoder.resid.mean_image"),
        (Selector::MeanText, "decoder.resid.mean_text"),
    ] {
        let want = r.tensor(key).unwrap();
        let (n, l1, _) = want.size3().unwrap();
        layers = l1 - 1;
        for layer in 0..l1 {
            let part = Partition { tower: Tower::Decoder, site: Site::Resid, layer: layer as usize, selector };
            let acts = store.load(part).unwrap();
            assert_eq!(acts.sample, (0..n as u32).collect::<Vec<_>>(), "{key}: one row per sample, in order");
            let got = Tensor::from_slice(acts.matrix.as_slice().unwrap()).view([n, -1]);
            let d = max_abs_diff(&got, &want.select(1, layer));
            assert!(d <= 1e-4, "{key} layer {layer}: max |diff| {d:e}");
        }
    }
    // The logit lens at the last layer and token is the model's next token.
    let lens = mmprobe_store::store::read_parquet(&store_dir.join("logit_lens.parquet")).unwrap();
    let (sample, layer) = (lens.column("sample").unwrap().u32().unwrap(), lens.column("layer").unwrap().u32().unwrap());
    let selector = lens.column("selector").unwrap().str().unwrap();
    let id = lens.column("token_id").unwrap().i64().unwrap();
    let want = Vec::<i64>::try_from(r.tensor("next_token").unwrap()).unwrap();
    let mut got = vec![-1i64; want.len()];
    for k in 0..lens.height() {
        if layer.get(k) == Some(layers as u32) && selector.get(k) == Some("last") {
            got[sample.get(k).unwrap() as usize] = id.get(k).unwrap();
        }
    }
    assert_eq!(got, want);
}

#[test]
fn greedy_answers_match_transformers_generate() {
    let m = meta();
    let ds = Dataset::open(&data()).unwrap();
    // On the CPU whatever MMPROBE_TEST_DEVICE says: greedy decoding takes its prompts there.
    let l = LoadedLlava::load(&model_dir(), Device::Cpu, DType::F32).unwrap();
    let tok = tokenizer(&l);
    let proc = ImageProcessor::from_dir(&model_dir()).unwrap();
    let images = ds.images.as_ref().unwrap();
    let p = prompts(&ds);
    let want = m["answers"].as_array().unwrap();
    let mut right = 0;
    for start in (0..p.len()).step_by(100) {
        let end = (start + 100).min(p.len());
        let pixels: Vec<Tensor> = (start..end)
            .map(|i| {
                let img = open_rgb(&ds.root.join(images[i].as_deref().unwrap())).unwrap();
                Tensor::from_slice(&proc.process(&img)).view([3, 64, 64])
            })
            .collect();
        let image = tch::no_grad(|| l.model.encode_image(&Tensor::stack(&pixels, 0), &mut Capture::nothing()));
        let answers = mmprobe_zoo::vqa::greedy_answers(&l, &tok, &image, &p[start..end]).unwrap();
        for (i, words) in (start..end).zip(answers) {
            assert_eq!(words.join(" "), want[i].as_str().unwrap(), "row {i}");
            right += 1;
        }
    }
    assert_eq!(right, p.len());
}
