//! The shapes-clip recipe: checked parameters, a deterministic run, and a
//! folder that mmprobe's own loaders (config, tokenizer, processor, weights) read back.

use mmprobe_extract::DType;
use mmprobe_extract::clip::LoadedClip;
use mmprobe_extract::tokenize::TextTokenizer;
use mmprobe_zoo::training::Schedule;
use mmprobe_zoo::{ShapesClipParams, train_shapes_clip};

fn schedule(f: impl FnOnce(&mut Schedule)) -> Schedule {
    let mut s = ShapesClipParams::default().schedule;
    f(&mut s);
    s
}

fn tiny(seed: u64) -> ShapesClipParams {
    // One thread: bit-for-bit repeatable. With two, a CI run once saw MKL's threaded sums differ.
    let schedule = schedule(|s| (s.seed, s.steps, s.batch_size, s.threads) = (seed, 3, 16, 1));
    ShapesClipParams { schedule, width: 16, layers: 1, heads: 2, ..Default::default() }
}

#[test]
fn bad_parameters_are_refused_before_training() {
    for p in [
        ShapesClipParams { schedule: schedule(|s| s.steps = 0), ..Default::default() },
        ShapesClipParams { schedule: schedule(|s| s.batch_size = 1), ..Default::default() },
        ShapesClipParams { width: 30, heads: 4, ..Default::default() },
        ShapesClipParams { patch_size: 7, ..Default::default() },
        ShapesClipParams { schedule: schedule(|s| s.learning_rate = f64::NAN), ..Default::default() },
        ShapesClipParams { schedule: schedule(|s| s.weight_decay = 1.0), ..Default::default() },
        ShapesClipParams { schedule: schedule(|s| s.threads = 0), ..Default::default() },
    ] {
        assert!(p.clone().check().is_err(), "{p:?} was accepted");
    }
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut steps = 0;
    let sa = train_shapes_clip(a.path(), &tiny(5).check().unwrap(), &mut |_| steps += 1).unwrap();
    train_shapes_clip(b.path(), &tiny(5).check().unwrap(), &mut |_| {}).unwrap();
    train_shapes_clip(c.path(), &tiny(6).check().unwrap(), &mut |_| {}).unwrap();
    assert_eq!(steps, 3);
    assert!(sa.final_loss.is_finite());
    let w = |d: &tempfile::TempDir| std::fs::read(d.path().join("model.safetensors")).unwrap();
    assert!(w(&a) == w(&b), "same seed, different weights");
    assert!(w(&a) != w(&c), "different seeds, same weights");

    // The folder loads as a CLIP checkpoint and its tokenizer frames captions as CLIP's does.
    let clip = LoadedClip::load(a.path(), tch::Device::Cpu, DType::F32).unwrap();
    assert_eq!(clip.model.config.projection_dim, 16);
    let tok = TextTokenizer::from_dir(a.path(), 24, 0).unwrap();
    let b = tok.encode_batch(&["a large red circle, in the top left", "an orange ring"]).unwrap();
    let words: Vec<&str> = b.tokens[0].iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        words,
        ["<|startoftext|>", "a", "large", "red", "circle", ",", "in", "the", "top", "left", "<|endoftext|>"]
    );
    assert_eq!(b.tokens[1].len(), 5);
    assert!(b.tokens.iter().flatten().all(|(_, t)| t != "<unk>"), "a caption word is missing from the vocabulary");
}
