//! The committed shapes-clip, run by mmprobe's extraction, against transformers'
//! CLIPModel on the same checkpoint (scripts/fixtures/make_shapes_clip_reference.py):
//! parity on a trained model, not only on random ones.

use std::path::PathBuf;

use mmprobe_extract::preprocess::{ImageProcessor, open_rgb};
use mmprobe_extract::tokenize::TextTokenizer;
use mmprobe_extract::weights::Checkpoint;
use mmprobe_extract::{DType, DeviceChoice, ExtractOptions, Quiet, RunOptions, Selector, Site, Tower, extract};
use mmprobe_store::{Partition, Store};
use tch::Tensor;

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
    root().join("datasets/models/shapes-clip")
}

fn reference() -> Checkpoint {
    let dir = root().join("scripts/fixtures/shapes-clip");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let sha = mmprobe_store::manifest::sha256_file(&model_dir().join("model.safetensors")).unwrap();
    assert_eq!(
        meta["model_sha256"].as_str().unwrap(),
        sha,
        "the reference was made for other weights: rerun scripts/fixtures/make_shapes_clip_reference.py"
    );
    Checkpoint::open_files(&dir, [dir.join("reference.safetensors")]).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn tokenizer_and_image_processor_give_transformers_inputs() {
    let r = reference();
    let data = root().join("datasets/shapes/data.csv");
    let ds = mmprobe_store::dataset::Dataset::open(&data).unwrap();
    let texts: Vec<&str> = ds.texts.as_ref().unwrap().iter().map(|t| t.as_deref().unwrap()).collect();
    let tok = TextTokenizer::from_dir(&model_dir(), 24, 0).unwrap();
    let batch = tok.encode_batch(&texts).unwrap();
    assert_eq!(
        max_abs_diff(
            &batch.input_ids.to_kind(tch::Kind::Float),
            &r.tensor("input_ids").unwrap().to_kind(tch::Kind::Float)
        ),
        0.0
    );
    assert_eq!(
        max_abs_diff(
            &batch.attention_mask.to_kind(tch::Kind::Float),
            &r.tensor("attention_mask").unwrap().to_kind(tch::Kind::Float)
        ),
        0.0
    );

    let proc = ImageProcessor::from_dir(&model_dir()).unwrap();
    let want = r.tensor("pixel_values").unwrap();
    let images = ds.images.as_ref().unwrap();
    let rows = Vec::<i64>::try_from(r.tensor("pixel_rows").unwrap()).unwrap();
    assert!(!rows.is_empty());
    for (k, &i) in rows.iter().enumerate() {
        let img = open_rgb(&ds.root.join(images[i as usize].as_deref().unwrap())).unwrap();
        let got = Tensor::from_slice(&proc.process(&img)).view([3, 64, 64]);
        assert!(max_abs_diff(&got, &want.get(k as i64)) < 1e-5, "pixels of row {i}");
    }
}

#[test]
fn extracted_embeds_match_transformers() {
    let r = reference();
    let out = tempfile::tempdir().unwrap();
    let opts = ExtractOptions {
        towers: Some(vec![Tower::Vision, Tower::Text]),
        sites: vec![Site::Embeds],
        selectors: vec![Selector::Pooled],
        run: RunOptions { device: test_device(), dtype: DType::F32, batch_size: 64, ..Default::default() },
        ..ExtractOptions::new(model_dir(), root().join("datasets/shapes/data.csv"), out.path().join("store"))
    };
    extract(&opts, &Quiet).unwrap();
    let store = Store::open(&out.path().join("store")).unwrap();
    for (tower, key) in [(Tower::Vision, "vision.embeds"), (Tower::Text, "text.embeds")] {
        let acts = store.load(Partition { tower, site: Site::Embeds, layer: 0, selector: Selector::Pooled }).unwrap();
        let want = r.tensor(key).unwrap();
        let n = want.size()[0] as usize;
        assert_eq!(acts.sample, (0..n as u32).collect::<Vec<_>>(), "{key}: one row per sample, in order");
        let got = Tensor::from_slice(acts.matrix.as_slice().unwrap()).view([n as i64, -1]);
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-4, "{key}: max |diff| {d:e}");
    }
}
