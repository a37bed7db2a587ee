//! The shapes-llava recipe: checked parameters, a deterministic run that
//! leaves the shapes-clip vision tower as it was, and a folder that mmprobe's
//! LLaVA loader, prompt tokenizer and VQA evaluation read back.

use std::path::PathBuf;

use mmprobe_extract::DType;
use mmprobe_extract::llava::{LoadedLlava, PromptTokenizer};
use mmprobe_extract::weights::Checkpoint;
use mmprobe_zoo::shapes::{ShapeSample, words_of};
use mmprobe_zoo::shapes_llava::{TASKS, task_text};
use mmprobe_zoo::training::Schedule;
use mmprobe_zoo::{ShapesLlavaParams, train_shapes_llava, vqa_shapes};

fn clip_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/models/shapes-clip")
}

fn schedule(f: impl FnOnce(&mut Schedule)) -> Schedule {
    let mut s = ShapesLlavaParams::default().schedule;
    f(&mut s);
    s
}

fn tiny(seed: u64) -> ShapesLlavaParams {
    // One thread: bit-for-bit repeatable. With two, a CI run once saw MKL's threaded sums differ.
    let schedule = schedule(|s| (s.seed, s.steps, s.batch_size, s.threads) = (seed, 3, 8, 1));
    ShapesLlavaParams { schedule, width: 16, layers: 1, heads: 2, kv_heads: 1 }
}

#[test]
fn bad_parameters_are_refused_before_training() {
    for p in [
        ShapesLlavaParams { schedule: schedule(|s| s.steps = 0), ..Default::default() },
        ShapesLlavaParams { schedule: schedule(|s| s.batch_size = 0), ..Default::default() },
        ShapesLlavaParams { width: 30, heads: 4, ..Default::default() },
        // Head size 3: RoPE rotates pairs of dimensions.
        ShapesLlavaParams { width: 12, heads: 4, kv_heads: 2, ..Default::default() },
        ShapesLlavaParams { heads: 4, kv_heads: 3, ..Default::default() },
        ShapesLlavaParams { schedule: schedule(|s| s.learning_rate = -1.0), ..Default::default() },
    ] {
        assert!(p.clone().check().is_err(), "{p:?} was accepted");
    }
}

#[test]
fn every_task_has_a_prompt_with_one_image_and_words_the_tokenizer_knows() {
    let dir = tempfile::tempdir().unwrap();
    mmprobe_zoo::shapes_llava::write_model_files(dir.path(), &clip_dir(), &ShapesLlavaParams::default()).unwrap();
    let tok = PromptTokenizer::from_dir(dir.path(), 4, 65, Some(3)).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    for _ in 0..50 {
        let s = ShapeSample::random_object(&mut rng);
        for task in 0..TASKS {
            let (prompt, answer) = task_text(&s, task);
            let toks = tok.encode(&format!("{prompt} {answer} </s>")).unwrap();
            assert_eq!(toks.iter().filter(|t| t.image).count(), 65, "{prompt}");
            assert!(toks.iter().all(|t| t.text != "<unk>"), "{prompt} {answer}");
            let words: Vec<&str> =
                toks.iter().rev().skip(1).take(words_of(&answer).len()).map(|t| t.text.as_str()).collect();
            assert_eq!(words.into_iter().rev().collect::<Vec<_>>().join(" "), words_of(&answer).join(" "));
        }
    }
}

#[test]
fn same_seed_same_weights_and_the_vision_tower_stays_frozen() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut steps = 0;
    let sa = train_shapes_llava(a.path(), &clip_dir(), &tiny(5).check().unwrap(), &mut |_| steps += 1).unwrap();
    train_shapes_llava(b.path(), &clip_dir(), &tiny(5).check().unwrap(), &mut |_| {}).unwrap();
    train_shapes_llava(c.path(), &clip_dir(), &tiny(6).check().unwrap(), &mut |_| {}).unwrap();
    assert_eq!(steps, 3);
    assert!(sa.final_loss.is_finite());
    let w = |d: &tempfile::TempDir| std::fs::read(d.path().join("model.safetensors")).unwrap();
    assert!(w(&a) == w(&b), "same seed, different weights");
    assert!(w(&a) != w(&c), "different seeds, same weights");

    // Saved in transformers 5's layout; the vision tower is shapes-clip's, untouched by training.
    let saved = Checkpoint::open(a.path()).unwrap();
    let clip = Checkpoint::open(&clip_dir()).unwrap();
    let mut vision = 0;
    for name in saved.names() {
        if let Some(rest) = name.strip_prefix("model.vision_tower.vision_model.") {
            let (x, y) = (saved.tensor(name).unwrap(), clip.tensor(&format!("vision_model.{rest}")).unwrap());
            assert!(x.equal(&y), "{name} changed");
            vision += 1;
        } else {
            assert!(
                ["model.multi_modal_projector.", "model.language_model.", "lm_head."]
                    .iter()
                    .any(|p| name.starts_with(p)),
                "unexpected key {name}"
            );
        }
    }
    assert!(vision > 10);
    assert!(sa.parameters < saved.names().map(|n| saved.tensor(n).unwrap().numel() as i64).sum::<i64>());

    let l = LoadedLlava::load(a.path(), tch::Device::Cpu, DType::F32).unwrap();
    assert_eq!(l.model.config.text_config.hidden_size, 16);
    let report = vqa_shapes(a.path(), 10, 999).unwrap();
    assert_eq!(report.tasks.len(), TASKS);
    assert!(report.tasks.iter().all(|t| (0.0..=1.0).contains(&t.accuracy)));
}
