//! Tokenisation and image preprocessing against transformers' CLIPTokenizer
//! and CLIPImageProcessorPil outputs.

mod common;

use common::{clip_dir, fixtures, reference};
use mmprobe_extract::ModelDir;
use mmprobe_extract::clip::ClipConfig;
use mmprobe_extract::preprocess::{ImageProcessor, open_rgb};
use mmprobe_extract::tokenize::TextTokenizer;
use tch::Tensor;

fn reference_list(name: &str, key: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(clip_dir(name).join("reference.json")).unwrap()).unwrap();
    v[key].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn check_tokenizer(name: &str) {
    let dir = clip_dir(name);
    let config: ClipConfig = ModelDir::open(&dir).unwrap().config().unwrap();
    let tc = &config.text_config;
    let tok = TextTokenizer::from_dir(&dir, tc.max_position_embeddings as usize, tc.pad_token_id as u32).unwrap();
    let texts = reference_list(name, "texts");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = tok.encode_batch(&refs).unwrap();
    let r = reference(&dir);
    let want_ids = r.tensor("input_ids").unwrap();
    assert_eq!(batch.input_ids.size(), want_ids.size(), "{name}: padded batch shape");
    assert!(batch.input_ids.equal(&want_ids), "{name}: ids differ\n{}\n{}", batch.input_ids, want_ids);
    assert!(batch.attention_mask.equal(&r.tensor("attention_mask").unwrap()), "{name}: mask differs");
    // Token texts line up with ids and carry no padding.
    assert_eq!(
        batch.tokens[0].iter().map(|t| t.1.as_str()).collect::<Vec<_>>(),
        ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>"]
    );
}

#[test]
fn tokenizer_matches_transformers() {
    check_tokenizer("tiny-a");
}

#[test]
fn tokenizer_truncates_to_model_positions() {
    // tiny-b has 32 positions; the long caption is cut and still ends in EOS.
    check_tokenizer("tiny-b");
}

fn check_images(name: &str) {
    let dir = clip_dir(name);
    let proc = ImageProcessor::from_dir(&dir).unwrap();
    let r = reference(&dir);
    let want_raw = r.tensor("pixels_unnormalised").unwrap();
    let want = r.tensor("pixel_values").unwrap();
    let images = reference_list(name, "images");
    let mut worst = Vec::new();
    for (i, file) in images.iter().enumerate() {
        let img = open_rgb(&fixtures().join("images").join(file)).unwrap();
        let (h, w) = proc.output_size();
        let got_raw = Tensor::from_slice(&proc.unnormalised(&img)).view([3, h as i64, w as i64]);
        let want_raw_i = want_raw.get(i as i64);
        let d = common::max_abs_diff(&got_raw, &want_raw_i);
        worst.push(format!("{file}: {:.2}/255", d * 255.0));
        // JPEGs too: they are decoded by libjpeg-turbo with Pillow's settings.
        assert_eq!(d, 0.0, "{name} {file}: unnormalised pixels differ by {d}");
        let got = Tensor::from_slice(&proc.process(&img)).view([3, h as i64, w as i64]);
        let d = common::max_abs_diff(&got, &want.get(i as i64));
        assert_eq!(d, 0.0, "{name} {file}: normalised pixels differ by {d}");
        // What a GPU run sends: the bytes, looked up on the device, give the same values.
        let mut bytes = vec![0u8; 3 * h * w];
        proc.bytes_into(&img, &mut bytes);
        let table: Vec<f32> = proc.table().concat();
        let px = mmprobe_extract::Pixels::Bytes {
            bytes: Tensor::from_slice(&bytes).view([1, 3, h as i64, w as i64]),
            table: Tensor::from_slice(&table).view([3, 256]),
        };
        let looked_up = px.to_model(common::device(), tch::Kind::Float).to_device(tch::Device::Cpu);
        let d = common::max_abs_diff(&looked_up.get(0), &want.get(i as i64));
        assert_eq!(d, 0.0, "{name} {file}: pixels looked up from bytes differ by {d}");
    }
    eprintln!("{name}: {}", worst.join(", "));
}

#[test]
fn preprocessing_matches_pil_backend() {
    check_images("tiny-a");
}

#[test]
fn preprocessing_matches_pil_backend_when_crop_exceeds_resize() {
    check_images("tiny-b");
}
