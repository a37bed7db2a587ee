//! Extraction into a store, read back and compared with transformers'
//! hidden states (scripts/fixtures/make_clip.py's reference outputs).

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{assert_close, clip_dir, fixtures, reference};
use mmprobe_extract::runtime::device_name;
use mmprobe_extract::{
    DType, DeviceChoice, ExtractError, ExtractOptions, Quiet, RunOptions, Selector, Site, Tower, extract,
};
use mmprobe_store::{Partition, Store};
use tch::Tensor;

const TOL: f64 = 1e-4;

/// A CSV of the fixture images and texts (row i = reference batch row i) with labels of every type.
fn dataset(dir: &Path, rows: usize) -> std::path::PathBuf {
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(clip_dir("tiny-a").join("reference.json")).unwrap()).unwrap();
    let images = meta["images"].as_array().unwrap();
    let texts = meta["texts"].as_array().unwrap();
    let mut csv = String::from("id,image,text,colour,count,flag,score\n");
    for i in 0..rows {
        let img = fixtures().join("images").join(images[i % images.len()].as_str().unwrap());
        let text = texts[i % texts.len()].as_str().unwrap().replace('"', "\"\"");
        let score = if i % 3 == 0 { String::new() } else { format!("{:.1}", i as f64 / 2.0) };
        csv += &format!(
            "s{i},{},\"{text}\",{},{},{},{score}\n",
            img.display(),
            ["red", "green"][i % 2],
            i * 10,
            i % 2 == 0
        );
    }
    let path = dir.join("data.csv");
    fs::write(&path, csv).unwrap();
    path
}

fn options(model: &str, data: &Path, out: &Path) -> ExtractOptions {
    ExtractOptions {
        sites: vec![Site::Resid, Site::Attn, Site::Mlp, Site::Embeds],
        selectors: vec![Selector::Cls, Selector::Eos, Selector::Last, Selector::Mean, Selector::All, Selector::Pooled],
        run: RunOptions {
            device: device_name(common::device()).parse::<DeviceChoice>().unwrap(),
            dtype: DType::F32,
            batch_size: 2,
            threads: None,
            allow_tf32: false,
            max_image_pixels: mmprobe_extract::preprocess::decode::MAX_IMAGE_PIXELS,
        },
        chunk_size: 3,
        ..ExtractOptions::new(clip_dir(model), data.to_path_buf(), out.to_path_buf())
    }
}

fn matrix(store: &Store, p: Partition) -> (Vec<u32>, Vec<i32>, Tensor) {
    let a = store.load(p).unwrap();
    let (n, d) = a.matrix.dim();
    (a.sample, a.pos, Tensor::from_slice(a.matrix.as_slice().unwrap()).view([n as i64, d as i64]))
}

#[test]
fn every_site_and_selector_matches_transformers() {
    for model in ["tiny-a", "tiny-b"] {
        let tmp = tempfile::tempdir().unwrap();
        // The reference batch holds 5 texts and the first 5 images.
        let data = dataset(tmp.path(), 5);
        let out = tmp.path().join("store");
        let s = extract(&options(model, &data, &out), &Quiet).unwrap();
        assert!(s.store_complete && s.failed == 0);
        // Where the time went: every stage worked, and no stage's thread counts more time than the run had.
        let t = &s.stages;
        assert!(t.setup > Duration::ZERO && t.loader_busy > Duration::ZERO && t.model_busy > Duration::ZERO, "{t:?}");
        assert!(t.writer_busy > Duration::ZERO, "{t:?}");
        let run = s.elapsed - t.setup;
        for (stage, spent) in [
            ("loader", t.loader_busy + t.loader_waiting),
            ("model", t.model_busy + t.model_waiting_for_batches + t.model_waiting_for_writer),
            ("writer", t.writer_busy + t.writer_waiting),
        ] {
            assert!(spent <= run, "{stage}: {spent:?} in a run of {run:?}");
        }

        let store = Store::open(&out).unwrap();
        let r = reference(&clip_dir(model));
        let ids = r.tensor("input_ids").unwrap();
        let lens: Vec<i64> =
            Vec::try_from(r.tensor("attention_mask").unwrap().sum_dim_intlist(1, false, tch::Kind::Int64)).unwrap();
        let parts = store.partitions().unwrap();
        let mut checked = 0;
        for p in &parts {
            let (sample, pos, got) = matrix(&store, *p);
            let name = format!("{model} {p}");
            let want = match p.site {
                Site::Embeds => r.tensor(&format!("{}.embeds", p.tower)).unwrap().narrow(0, 0, 5),
                site => {
                    let full = r.tensor(&format!("{}.{}.{}", p.tower, site, p.layer)).unwrap().narrow(0, 0, 5);
                    match (p.tower, p.selector) {
                        (Tower::Vision, Selector::Cls) => full.select(1, 0),
                        (Tower::Vision, Selector::Mean) => {
                            full.narrow(1, 1, full.size()[1] - 1).mean_dim(1, false, tch::Kind::Float)
                        }
                        (Tower::Vision, Selector::All) => full.reshape([-1, full.size()[2]]),
                        (Tower::Text, Selector::Eos) => {
                            let eos: Vec<i64> = (0..5)
                                .map(|i| {
                                    let row = ids.get(i);
                                    if model == "tiny-b" {
                                        row.argmax(0, false).int64_value(&[])
                                    } else {
                                        row.eq(49407).to_kind(tch::Kind::Int).argmax(0, false).int64_value(&[])
                                    }
                                })
                                .collect();
                            assert_eq!(pos, eos.iter().map(|&e| e as i32).collect::<Vec<_>>(), "{name}: eos positions");
                            Tensor::stack(&(0..5).map(|i| full.get(i).get(eos[i as usize])).collect::<Vec<_>>(), 0)
                        }
                        (Tower::Text, Selector::Last) => {
                            Tensor::stack(&(0..5).map(|i| full.get(i).get(lens[i as usize] - 1)).collect::<Vec<_>>(), 0)
                        }
                        (Tower::Text, Selector::Mean) => Tensor::stack(
                            &(0..5)
                                .map(|i| {
                                    full.get(i).narrow(0, 0, lens[i as usize]).mean_dim(0, false, tch::Kind::Float)
                                })
                                .collect::<Vec<_>>(),
                            0,
                        ),
                        (Tower::Text, Selector::All) => Tensor::cat(
                            &(0..5).map(|i| full.get(i).narrow(0, 0, lens[i as usize])).collect::<Vec<_>>(),
                            0,
                        ),
                        other => panic!("{name}: unexpected partition {other:?}"),
                    }
                }
            };
            assert_close(&name, &got, &want, TOL);
            assert!(sample.windows(2).all(|w| w[0] <= w[1]), "{name}: rows sorted by sample");
            checked += 1;
        }
        // vision: (resid N+1, attn N, mlp N) x (cls, mean, all) + embeds; text: same x (eos, last, mean, all) + embeds
        let info = mmprobe_extract::ModelInfo::from_dir(&clip_dir(model)).unwrap();
        let (nv, nt) = (info.towers[0].layers, info.towers[1].layers);
        assert_eq!(checked, (3 * nv + 1) * 3 + 1 + (3 * nt + 1) * 4 + 1, "{model}: partitions");
    }
}

#[test]
fn a_vision_store_read_at_cls_alone_matches_transformers() {
    // Every vision partition is `cls` or the pooled embeds, so the last layer runs at CLS alone.
    for model in ["tiny-a", "tiny-b"] {
        let tmp = tempfile::tempdir().unwrap();
        let data = dataset(tmp.path(), 5);
        let out = tmp.path().join("store");
        let mut o = options(model, &data, &out);
        (o.towers, o.selectors) = (Some(vec![Tower::Vision]), vec![Selector::Cls, Selector::Pooled]);
        assert!(extract(&o, &Quiet).unwrap().store_complete);
        let store = Store::open(&out).unwrap();
        let r = reference(&clip_dir(model));
        let parts = store.partitions().unwrap();
        let n = mmprobe_extract::ModelInfo::from_dir(&clip_dir(model)).unwrap().towers[0].layers;
        assert_eq!(parts.len(), 3 * n + 2, "{model}: resid 0..=N, attn and mlp 1..=N, embeds");
        for p in &parts {
            let (sample, pos, got) = matrix(&store, *p);
            let want = match p.site {
                Site::Embeds => r.tensor("vision.embeds").unwrap(),
                site => r.tensor(&format!("vision.{site}.{}", p.layer)).unwrap().select(1, 0),
            };
            assert_close(&format!("{model} {p}"), &got, &want.narrow(0, 0, 5), TOL);
            assert_eq!(sample, [0, 1, 2, 3, 4], "{model} {p}");
            if p.site != Site::Embeds {
                assert_eq!(pos, [0; 5], "{model} {p}: the CLS position");
            }
        }
    }
}

#[test]
fn all_rows_carry_token_texts_and_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 5);
    let out = tmp.path().join("store");
    extract(&options("tiny-a", &data, &out), &Quiet).unwrap();
    let tokens = mmprobe_store::store::read_parquet(&out.join("tokens.parquet")).unwrap();
    let store = Store::open(&out).unwrap();
    let p = Partition { tower: Tower::Text, site: Site::Resid, layer: 1, selector: Selector::All };
    let (sample, pos, _) = matrix(&store, p);
    let tower = tokens.column("tower").unwrap().str().unwrap();
    let text_rows: Vec<usize> = (0..tokens.height()).filter(|&i| tower.get(i) == Some("text")).collect();
    assert_eq!(text_rows.len(), sample.len(), "one token row per stored text row");
    let t_sample = tokens.column("sample").unwrap().u32().unwrap();
    let t_pos = tokens.column("pos").unwrap().i32().unwrap();
    let t_tok = tokens.column("token").unwrap().str().unwrap();
    let t_mod = tokens.column("modality").unwrap().str().unwrap();
    for (k, &i) in text_rows.iter().enumerate() {
        assert_eq!((t_sample.get(i), t_pos.get(i)), (Some(sample[k]), Some(pos[k])));
        assert_eq!(t_mod.get(i), Some("text"));
    }
    let first: Vec<&str> = text_rows.iter().take(7).map(|&i| t_tok.get(i).unwrap()).collect();
    assert_eq!(first, ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>"]);
    let vision: Vec<usize> = (0..tokens.height()).filter(|&i| tower.get(i) == Some("vision")).collect();
    assert_eq!(t_tok.get(vision[0]), Some("<cls>"));
    assert_eq!(t_tok.get(vision[1]), Some("<patch 0,0>"));
    assert_eq!(t_mod.get(vision[1]), Some("image"));
}

#[test]
fn labels_join_with_types_and_nulls_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 7);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    o.towers = Some(vec![Tower::Vision]);
    o.selectors = vec![Selector::Cls];
    o.sites = vec![Site::Resid];
    o.layers = "-1".parse().unwrap();
    extract(&o, &Quiet).unwrap();
    let store = Store::open(&out).unwrap();
    assert_eq!(store.partitions().unwrap().len(), 1, "only the last layer's cls");
    let p = Partition { tower: Tower::Vision, site: Site::Resid, layer: 2, selector: Selector::Cls };
    let (acts, labels) = store.load_labeled(p, &["colour", "count", "flag", "score"]).unwrap();
    assert_eq!(acts.matrix.dim(), (7, 24));
    assert_eq!(labels.column("colour").unwrap().str().unwrap().get(1), Some("green"));
    assert_eq!(labels.column("count").unwrap().i64().unwrap().get(3), Some(30));
    assert_eq!(labels.column("flag").unwrap().bool().unwrap().get(2), Some(true));
    assert_eq!(labels.column("score").unwrap().null_count(), 3);
    assert!(store.load_labeled(p, &["nope"]).unwrap_err().to_string().contains("no column 'nope'"));
    let m = store.manifest.as_ref().unwrap();
    assert_eq!(m.dataset.as_ref().unwrap().rows, 7);
    assert_eq!(m.model.as_ref().unwrap().weights.len(), 1);
}

#[test]
fn two_shards_equal_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 11);
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    extract(&options("tiny-b", &data, &one), &Quiet).unwrap();
    let mut o = options("tiny-b", &data, &two);
    o.shard = (1, 2);
    let s = extract(&o, &Quiet).unwrap();
    assert!(!s.store_complete);
    o.shard = (0, 2);
    let s = extract(&o, &Quiet).unwrap();
    assert!(s.store_complete);
    let (a, b) = (Store::open(&one).unwrap(), Store::open(&two).unwrap());
    assert_eq!(a.partitions().unwrap(), b.partitions().unwrap());
    for p in a.partitions().unwrap() {
        let (x, y) = (a.load(p).unwrap(), b.load(p).unwrap());
        assert_eq!((x.sample, x.pos), (y.sample, y.pos), "{p}");
        assert_eq!(x.matrix, y.matrix, "{p}");
    }
}

#[test]
fn bad_inputs_stop_or_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let img = |f: &str| fixtures().join("images").join(f).display().to_string();
    let csv = format!(
        "id,image,text,y\na,{},a cat,1\nb,{},a dog,0\nc,{},,1\nd,{},a bird,0\n",
        img("rgb_50x41.png"),
        img("not_an_image.png"),
        img("grey_70x20.png"),
        img("small_12x9.png")
    );
    let data = tmp.path().join("bad.csv");
    fs::write(&data, csv).unwrap();
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    o.chunk_size = 1;
    let err = extract(&o, &Quiet).unwrap_err().to_string();
    assert!(err.contains("row 1 (id 'b')") && err.contains("not_an_image.png"), "{err}");
    // The chunk before the bad row was written and stays readable.
    let store = Store::open(&out).unwrap();
    let p = Partition { tower: Tower::Vision, site: Site::Embeds, layer: 0, selector: Selector::Pooled };
    assert_eq!(store.load(p).unwrap().sample, vec![0]);

    o.skip_bad = true;
    let s = extract(&o, &Quiet).unwrap();
    assert_eq!(s.failed, 2);
    let errors = mmprobe_store::store::read_parquet(&out.join("errors.parquet")).unwrap();
    let ids: Vec<&str> = errors.column("id").unwrap().str().unwrap().iter().map(|x| x.unwrap()).collect();
    assert_eq!(ids, ["b", "c"]);
    let stages: Vec<&str> = errors.column("stage").unwrap().str().unwrap().iter().map(|x| x.unwrap()).collect();
    assert_eq!(stages, ["image", "text"]);
    assert_eq!(Store::open(&out).unwrap().load(p).unwrap().sample, vec![0, 3]);
}

#[test]
fn bad_datasets_and_flags_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let run = |csv: &str, f: &dyn Fn(&mut ExtractOptions)| -> String {
        let data = tmp.path().join("d.csv");
        fs::write(&data, csv).unwrap();
        let mut o = options("tiny-a", &data, &out);
        f(&mut o);
        let e: ExtractError = extract(&o, &Quiet).unwrap_err();
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        s
    };
    let e = run("id,image,text\n", &|_| {});
    assert!(e.contains("it has no rows"), "{e}");
    let text_only = |o: &mut ExtractOptions| {
        o.towers = Some(vec![Tower::Text]);
        o.selectors = vec![Selector::Eos];
    };
    let e = run("id,text\nx,a\nx,b\n", &text_only);
    assert!(e.contains("duplicate id 'x'"), "{e}");
    // Named (left to default, a tower without its input is left out and said).
    let e = run("id,text\nx,a\n", &|o| o.towers = Some(vec![Tower::Vision, Tower::Text]));
    assert!(e.contains("the vision tower needs a 'image' column"), "{e}");
    let e = run("id,caption\nx,a\n", &text_only);
    assert!(e.contains("needs an 'image' or 'text' column (it has: id, caption)"), "{e}");
    let e = run("id,text\nx,a\n", &|o| o.towers = Some(vec![Tower::Decoder]));
    assert!(e.contains("has no decoder tower"), "{e}");
    let e = run("id,text\nx,a\n", &|o| {
        o.towers = Some(vec![Tower::Text]);
        o.selectors = vec![Selector::Cls];
    });
    assert!(e.contains("'cls' fits none of the requested towers"), "{e}");
}

#[test]
fn a_store_of_another_model_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 3);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    o.selectors = vec![Selector::Pooled];
    o.sites = vec![Site::Embeds];
    extract(&o, &Quiet).unwrap();
    o.model = clip_dir("tiny-b");
    let e = extract(&o, &Quiet).unwrap_err().to_string();
    assert!(e.contains("already holds a store") && e.contains("another model") && e.contains("--force"), "{e}");
    o.force = true;
    extract(&o, &Quiet).unwrap();
    let store = Store::open(&out).unwrap();
    let p = Partition { tower: Tower::Text, site: Site::Embeds, layer: 0, selector: Selector::Pooled };
    assert_eq!(store.load(p).unwrap().matrix.dim(), (3, 12), "tiny-b's projection width");
}

#[test]
fn allow_tf32_is_recorded_and_a_store_is_resumed_only_with_its_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 5);
    let (exact, tf32) = (tmp.path().join("exact"), tmp.path().join("tf32"));
    let mut o = options("tiny-a", &data, &exact);
    // On the CPU TF32 does not exist: the setting changes the arithmetic's order only.
    o.run.device = DeviceChoice::Cpu;
    o.towers = Some(vec![Tower::Vision]);
    o.sites = vec![Site::Resid, Site::Embeds];
    o.selectors = vec![Selector::Cls, Selector::Mean, Selector::Pooled];
    extract(&o, &Quiet).unwrap();
    let mut t = o.clone();
    t.out = tf32.clone();
    t.run.allow_tf32 = true;
    extract(&t, &Quiet).unwrap();

    let (a, b) = (Store::open(&exact).unwrap(), Store::open(&tf32).unwrap());
    let model = |s: &Store| s.manifest.as_ref().unwrap().model.clone().unwrap();
    assert!(!model(&a).allow_tf32 && model(&b).allow_tf32);
    assert_eq!((model(&b).dtype.as_str(), model(&b).device.as_str()), ("f32", "cpu"));
    let json: serde_json::Value = serde_json::from_slice(&fs::read(tf32.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(json["model"]["allow_tf32"], serde_json::Value::Bool(true), "{json}");
    // The convolution (--allow-tf32) and the exact GEMM give the same states up to rounding.
    let parts = a.partitions().unwrap();
    assert_eq!(parts, b.partitions().unwrap());
    for p in parts {
        let (x, y) = (matrix(&a, p).2, matrix(&b, p).2);
        let scale = x.abs().max().double_value(&[]);
        let d = (&x - &y).abs().max().double_value(&[]);
        assert!(d <= 1e-5 * scale, "{p}: max |diff| {d:e} of max |x| {scale:e}");
    }

    // Another TF32 setting is refused like another dtype, either way round, unless forced.
    for (store, allow, want) in
        [(&exact, true, "in f32, not f32 with --allow-tf32"), (&tf32, false, "in f32 with --allow-tf32, not f32")]
    {
        let mut r = o.clone();
        (r.out, r.run.allow_tf32) = (store.clone(), allow);
        let e = extract(&r, &Quiet).unwrap_err().to_string();
        assert!(e.contains("already holds a store") && e.contains(want) && e.contains("--force"), "{e}");
    }
    // The same setting resumes (here: finds every chunk done).
    let s = extract(&t, &Quiet).unwrap();
    assert_eq!((s.samples_run, s.samples_resumed), (0, 5));
    t.force = true;
    t.run.allow_tf32 = false;
    extract(&t, &Quiet).unwrap();
    assert!(!model(&Store::open(&tf32).unwrap()).allow_tf32);
}

/// Runs `extract` on its own thread and gives up after `secs`: a hang fails the test instead of stalling it.
fn extract_within(o: &ExtractOptions, secs: u64) -> mmprobe_extract::Result<mmprobe_extract::ExtractSummary> {
    let (tx, rx) = std::sync::mpsc::channel();
    let o = o.clone();
    std::thread::spawn(move || {
        let _ = tx.send(extract(&o, &Quiet));
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs)).expect("extract hung")
}

#[test]
fn a_write_failure_ends_the_run_naming_the_file_and_keeps_what_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    // Enough batches after the failure that the writer's queue cannot hold them all.
    let data = dataset(tmp.path(), 300);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    o.towers = Some(vec![Tower::Vision]);
    o.sites = vec![Site::Resid, Site::Embeds];
    o.selectors = vec![Selector::Cls, Selector::Pooled];
    o.run.batch_size = 1;
    o.chunk_size = 2;
    // Shard 0 of 2 makes a store (chunks 0, 2, 4, ...); shard 1 then fails writing chunk 5,
    // with chunks 7 to 149 still to come.
    o.shard = (0, 2);
    extract_within(&o, 60).unwrap();
    o.shard = (1, 2);
    let p = Partition { tower: Tower::Vision, site: Site::Resid, layer: 1, selector: Selector::Cls };
    let blocked = mmprobe_store::layout::tmp_path(&p.part(&out, 1, 5));
    fs::create_dir_all(&blocked).unwrap();
    let e = extract_within(&o, 60).unwrap_err().to_string();
    assert!(!e.contains('\n') && e.contains(&*blocked.to_string_lossy()), "{e}");
    // Chunks 1 and 3 were written before the failure and are kept.
    let progress = mmprobe_store::ShardProgress::load(&out, 1, 2).unwrap().unwrap();
    assert_eq!(progress.chunks_done.iter().copied().collect::<Vec<_>>(), [1, 3]);
    fs::remove_dir(&blocked).unwrap();
    let s = extract_within(&o, 60).unwrap();
    assert!(s.store_complete);
    assert_eq!(s.samples_resumed, 4, "chunks 1 and 3 were not redone");
    assert_eq!(s.samples_run, 146);
    let one = tmp.path().join("one");
    let mut u = o.clone();
    (u.out, u.shard) = (one.clone(), (0, 1));
    extract_within(&u, 60).unwrap();
    let (a, b) = (Store::open(&one).unwrap(), Store::open(&out).unwrap());
    for p in a.partitions().unwrap() {
        let (x, y) = (a.load(p).unwrap(), b.load(p).unwrap());
        assert_eq!((x.sample, x.matrix), (y.sample, y.matrix), "{p}");
    }
}

#[test]
fn a_store_filled_under_one_shard_count_refuses_another_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 11);
    let out = tmp.path().join("store");
    let mut o = options("tiny-b", &data, &out);
    o.towers = Some(vec![Tower::Vision]);
    o.sites = vec![Site::Embeds];
    o.selectors = vec![Selector::Pooled];
    o.shard = (1, 2);
    extract(&o, &Quiet).unwrap();
    for other in [(0, 1), (1, 3), (0, 3)] {
        o.shard = other;
        let e = extract(&o, &Quiet).unwrap_err().to_string();
        let (want, got) = ("--shard I/2", format!("--shard {}/{}", other.0, other.1));
        assert!(!e.contains('\n') && e.contains(want) && e.contains(&got) && e.contains("--force"), "{e}");
    }
    // Forced, the store is made again under the new count, each sample once.
    o.shard = (0, 1);
    o.force = true;
    let s = extract(&o, &Quiet).unwrap();
    assert!(s.store_complete);
    let p = Partition { tower: Tower::Vision, site: Site::Embeds, layer: 0, selector: Selector::Pooled };
    assert_eq!(Store::open(&out).unwrap().load(p).unwrap().sample, (0..11).collect::<Vec<u32>>());
}

#[test]
fn force_never_removes_the_dataset_or_model_it_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 3);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    o.towers = Some(vec![Tower::Text]);
    o.sites = vec![Site::Embeds];
    o.selectors = vec![Selector::Pooled];
    extract(&o, &Quiet).unwrap();
    // The store's own samples.parquet read as the dataset of a forced run into that store.
    let samples = out.join("samples.parquet");
    let before = fs::read(&samples).unwrap();
    o.data = samples.clone();
    o.force = true;
    let e = extract(&o, &Quiet).unwrap_err().to_string();
    assert!(!e.contains('\n') && e.contains("--force") && e.contains(&*samples.to_string_lossy()), "{e}");
    assert!(e.contains("the dataset"), "{e}");
    assert_eq!(fs::read(&samples).unwrap(), before, "the dataset is untouched");
    assert!(out.join("manifest.json").is_file() && out.join("acts").is_dir(), "nothing else was removed either");
}

#[test]
fn out_of_range_layers_and_a_zero_batch_are_refused_naming_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 2);
    let out = tmp.path().join("store");
    let run = |f: &dyn Fn(&mut ExtractOptions)| -> String {
        let mut o = options("tiny-a", &data, &out);
        o.towers = Some(vec![Tower::Vision]);
        o.selectors = vec![Selector::Cls];
        o.sites = vec![Site::Resid];
        f(&mut o);
        let s = extract(&o, &Quiet).unwrap_err().to_string();
        assert!(!s.contains('\n'), "{s}");
        s
    };
    // tiny-a's vision tower has 2 layers: resid 0..=2, or -3..=-1.
    for spec in ["99", "2,99", "-4", "0,-4"] {
        let e = run(&|o| o.layers = spec.parse().unwrap());
        let bad = spec.rsplit(',').next().unwrap();
        assert!(e.contains("--layers") && e.contains(bad) && e.contains("2 layers"), "{spec}: {e}");
        assert!(!e.contains("--select"), "{spec}: {e}");
    }
    let e = run(&|o| o.run.batch_size = 0);
    assert!(e.contains("batch size") && e.contains("at least 1"), "{e}");
    assert!(!out.join("acts").exists(), "nothing was extracted");
    // In range, negative indices count from the last layer.
    let mut o = options("tiny-a", &data, &out);
    (o.towers, o.selectors, o.sites) = (Some(vec![Tower::Vision]), vec![Selector::Cls], vec![Site::Resid]);
    o.layers = "-3,-1".parse().unwrap();
    extract(&o, &Quiet).unwrap();
    let layers: Vec<usize> = Store::open(&out).unwrap().partitions().unwrap().iter().map(|p| p.layer).collect();
    assert_eq!(layers, [0, 2]);
}

/// A copy of a CLIP fixture that `edit` changes.
fn edited_model(dir: &Path, name: &str, edit: &dyn Fn(&Path)) -> std::path::PathBuf {
    let to = dir.join(name);
    fs::create_dir_all(&to).unwrap();
    for e in fs::read_dir(clip_dir(name)).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
    edit(&to);
    to
}

fn edit_json(path: &Path, f: &dyn Fn(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    f(&mut v);
    fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn configs_that_disagree_are_refused_at_load_not_a_libtorch_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 3);
    let out = tmp.path().join("store");
    let run = |model: std::path::PathBuf, towers: Tower, data: &Path| -> String {
        let mut o = options("tiny-a", data, &out);
        (o.model, o.towers, o.sites, o.selectors) =
            (model, Some(vec![towers]), vec![Site::Embeds], vec![Selector::Pooled]);
        let r = std::panic::catch_unwind(|| extract(&o, &Quiet));
        let e = r.expect("an error, not a panic").unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    };
    // A tokenizer token the embedding table has no row for.
    let model = edited_model(tmp.path(), "tiny-a", &|d| {
        edit_json(&d.join("tokenizer.json"), &|t| {
            let mut extra = t["added_tokens"][0].clone();
            (extra["id"], extra["content"]) = (49408.into(), "<extra>".into());
            t["added_tokens"].as_array_mut().unwrap().push(extra);
        })
    });
    let texts = tmp.path().join("extra.csv");
    fs::write(&texts, "id,text\na,a <extra> cat\n").unwrap();
    let e = run(model, Tower::Text, &texts);
    assert!(e.contains("49408") && e.contains("vocab_size") && e.contains("tokenizer.json"), "{e}");
    // A crop the vision tower's position embeddings do not fit.
    let model = edited_model(&tmp.path().join("crop"), "tiny-a", &|d| {
        edit_json(&d.join("preprocessor_config.json"), &|p| {
            p["crop_size"] = serde_json::json!({"height": 40, "width": 40});
            p["size"] = serde_json::json!({"shortest_edge": 40});
        })
    });
    let e = run(model, Tower::Vision, &data);
    assert!(e.contains("40x40") && e.contains("32x32") && e.contains("preprocessor_config.json"), "{e}");
}

#[test]
fn the_pixel_limit_is_an_option_of_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 3);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    (o.towers, o.sites, o.selectors) = (Some(vec![Tower::Vision]), vec![Site::Embeds], vec![Selector::Pooled]);
    // The fixture's first image is 50x41 = 2050 pixels.
    o.run.max_image_pixels = 2000;
    let e = extract(&o, &Quiet).unwrap_err().to_string();
    assert!(e.contains("row 0 (id 's0')") && e.contains("--max-image-pixels"), "{e}");
    o.run.max_image_pixels = mmprobe_extract::preprocess::decode::MAX_IMAGE_PIXELS;
    extract(&o, &Quiet).unwrap();
}

#[test]
fn malformed_datasets_name_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let open = |name: &str, body: &str| -> String {
        let p = tmp.path().join(name);
        fs::write(&p, body).unwrap();
        let e = mmprobe_store::Dataset::open(&p).err().expect("refused").to_string();
        assert!(!e.contains('\n') && e.contains(name), "{e}");
        e
    };
    let e = open("ragged.csv", "id,text,y\na,\"a cat, black\",1\nb,a dog,0,extra\nc,a bird,1\n");
    assert!(e.contains("line 3") && e.contains("4 fields") && e.contains("3"), "{e}");
    let e = open(
        "bad.jsonl",
        "{\"id\": \"a\", \"text\": \"x\"}\n{\"id\": \"b\", \"text\": \"y\"}\n{\"id\": \"c\" \"text\": 1}\n",
    );
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn a_refused_store_says_what_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 3);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    (o.towers, o.sites, o.selectors) = (Some(vec![Tower::Text]), vec![Site::Embeds], vec![Selector::Pooled]);
    extract(&o, &Quiet).unwrap();
    let mut c = o.clone();
    c.chunk_size = 2;
    let e = extract(&c, &Quiet).unwrap_err().to_string();
    assert!(e.contains("--chunk-size 3") && e.contains("not 2") && !e.contains("selectors"), "{e}");
    // The same file, edited.
    fs::write(&data, fs::read_to_string(&data).unwrap().replace("a photo of a cat", "a photo of a dog")).unwrap();
    let e = extract(&o, &Quiet).unwrap_err().to_string();
    assert!(e.contains("sha256") && e.contains("changed") && !e.contains("another dataset"), "{e}");
}

#[test]
fn every_row_bad_is_an_error_not_a_complete_empty_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.csv");
    let img = fixtures().join("images/not_an_image.png");
    fs::write(&data, format!("id,image,y\na,{0},1\nb,{0},0\n", img.display())).unwrap();
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    (o.towers, o.sites, o.selectors) = (Some(vec![Tower::Vision]), vec![Site::Embeds], vec![Selector::Pooled]);
    o.skip_bad = true;
    let e = extract(&o, &Quiet).unwrap_err().to_string();
    assert!(e.contains("every row") && e.contains("2") && e.contains("errors.parquet"), "{e}");
    assert!(out.join("errors.parquet").is_file());
    // Read as a store, it says what it lacks.
    let e = Store::open(&out).err().expect("no activations").to_string();
    assert!(e.contains("no acts/") && !e.contains("no samples.parquet"), "{e}");
}

#[test]
fn what_a_run_leaves_out_is_counted_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    // A tensor in the checkpoint that no parameter of the model takes.
    let model = edited_model(tmp.path(), "tiny-b", &|d| {
        let extra = Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
        Tensor::write_safetensors(&[("extra.weight", &extra)], d.join("extra.safetensors")).unwrap();
        edit_json(&d.join("model.safetensors.index.json"), &|i| {
            i["weight_map"]["extra.weight"] = "extra.safetensors".into();
        });
    });
    // tiny-b's text tower holds 32 positions: one text of 60 words is cut.
    let data = tmp.path().join("long.csv");
    fs::write(&data, format!("id,text\na,a cat\nb,{}\n", vec!["cat"; 60].join(" "))).unwrap();
    let mut o = options("tiny-b", &data, &tmp.path().join("store"));
    (o.model, o.towers, o.sites, o.selectors) =
        (model, Some(vec![Tower::Text]), vec![Site::Embeds], vec![Selector::Pooled]);
    let s = extract(&o, &Quiet).unwrap();
    assert_eq!(s.unused_tensors, ["extra.weight"]);
    assert_eq!(s.texts_truncated, 1);

    // An image folder's files that are not samples.
    let folder = tmp.path().join("folder");
    fs::create_dir_all(folder.join("red/deeper")).unwrap();
    fs::copy(fixtures().join("images/rgb_50x41.png"), folder.join("red/a.png")).unwrap();
    fs::write(folder.join("red/notes.txt"), "x").unwrap();
    fs::write(folder.join("README.md"), "x").unwrap();
    let d = mmprobe_store::Dataset::open(&folder).unwrap();
    assert_eq!(d.len(), 1);
    let skipped = d.skipped.join("; ");
    assert!(d.skipped.len() == 3 && skipped.contains("README.md (not in a <label>/ folder)"), "{skipped}");
    assert!(skipped.contains("red/notes.txt (not an image") && skipped.contains("red/deeper (a folder"), "{skipped}");
}

#[test]
fn a_shard_is_filled_by_one_run_at_a_time_and_dead_runs_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 3);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    (o.towers, o.sites, o.selectors) = (Some(vec![Tower::Text]), vec![Site::Embeds], vec![Selector::Pooled]);
    extract(&o, &Quiet).unwrap();
    // A temporary of a run that died, under a pid that is alive now (pid 1 always is).
    let p = Partition { tower: Tower::Text, site: Site::Embeds, layer: 0, selector: Selector::Pooled };
    let stale = p.dir(&out).join(".part-000-000000.parquet.tmp-1");
    fs::write(&stale, "half a part").unwrap();
    extract(&o, &Quiet).unwrap();
    assert!(!stale.exists(), "the dead run's temporary is removed");
    // While another run holds the shard, a second one is refused at once.
    let lock = mmprobe_extract::lock::ShardLock::acquire(&out, 0, 1).unwrap();
    let e = extract_within(&o, 60).unwrap_err().to_string();
    assert!(e.contains("another run") && e.contains("0/1") && !e.contains('\n'), "{e}");
    drop(lock);
    extract(&o, &Quiet).unwrap();
}

#[test]
fn hugging_face_parquet_images_are_read_from_their_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    // scripts/fixtures/make_hf_parquet.py: image = {bytes, path} with a bare file name.
    let hf = fixtures().join("hf_images.parquet");
    let by_path = tmp.path().join("by_path.csv");
    let img = |f: &str| fixtures().join("images").join(f).display().to_string();
    fs::write(&by_path, format!("image,label\n{},png\n{},jpeg\n", img("rgb_50x41.png"), img("exif6_40x24.jpg")))
        .unwrap();
    let run = |data: &Path, out: &str| {
        let mut o = options("tiny-a", data, &tmp.path().join(out));
        (o.towers, o.sites, o.selectors) = (Some(vec![Tower::Vision]), vec![Site::Embeds], vec![Selector::Pooled]);
        extract(&o, &Quiet).unwrap();
        Store::open(&tmp.path().join(out)).unwrap()
    };
    let (a, b) = (run(&hf, "hf"), run(&by_path, "csv"));
    let p = Partition { tower: Tower::Vision, site: Site::Embeds, layer: 0, selector: Selector::Pooled };
    assert_eq!(a.load(p).unwrap().matrix, b.load(p).unwrap().matrix);
    // samples.parquet keeps the image's path, not its bytes.
    let images =
        a.samples.column("image").unwrap().str().unwrap().iter().map(|x| x.unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(images, ["rgb_50x41.png", "exif6_40x24.jpg"]);
}

#[test]
fn defaults_fit_the_data_and_say_what_they_skip() {
    let tmp = tempfile::tempdir().unwrap();
    // An image folder: no text, so the text tower and its default selector are skipped.
    let folder = tmp.path().join("folder");
    for (label, f) in [("a", "rgb_50x41.png"), ("b", "grey_70x20.png")] {
        fs::create_dir_all(folder.join(label)).unwrap();
        fs::copy(fixtures().join("images").join(f), folder.join(label).join(f)).unwrap();
    }
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &folder, &out);
    (o.sites, o.selectors) = (vec![Site::Resid, Site::Embeds], vec![]);
    let s = extract(&o, &Quiet).unwrap();
    let notes = s.notes.join("\n");
    assert!(notes.contains("text tower") && notes.contains("'text' column"), "{notes}");
    assert!(notes.contains("'eos'"), "{notes}");
    let store = Store::open(&out).unwrap();
    assert!(store.partitions().unwrap().iter().all(|p| p.tower == Tower::Vision));
    let spec = store.manifest.as_ref().unwrap().extraction.clone().unwrap();
    assert_eq!(spec.sites.keys().collect::<Vec<_>>(), ["vision"], "the manifest lists what the store holds");
    assert_eq!(spec.selectors, ["cls", "pooled"]);

    // Asked for by name, a tower without its input is still an error.
    o.towers = Some(vec![Tower::Text]);
    o.out = tmp.path().join("s2");
    let e = extract(&o, &Quiet).unwrap_err().to_string();
    assert!(e.contains("the text tower needs a 'text' column"), "{e}");
}

#[test]
fn another_plan_is_refused_saying_what_differs_while_a_store_is_being_filled() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 5);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    (o.towers, o.sites, o.selectors) = (Some(vec![Tower::Vision]), vec![Site::Resid], vec![Selector::Cls]);
    o.layers = "1".parse().unwrap();
    o.shard = (0, 2);
    extract(&o, &Quiet).unwrap();
    let mut p = o.clone();
    (p.towers, p.sites, p.selectors) =
        (Some(vec![Tower::Vision, Tower::Text]), vec![Site::Resid], vec![Selector::Cls, Selector::Eos]);
    p.layers = "1,2".parse().unwrap();
    let e = extract(&p, &Quiet).unwrap_err().to_string();
    assert!(!e.contains('\n') && e.contains("--force") && e.contains("still being filled"), "{e}");
    assert!(e.contains("text") && e.contains("eos") && e.contains("vision resid layers 1, not 1, 2"), "{e}");
    // A part of the plan, asked for while the store is incomplete, is refused too.
    let mut q = o.clone();
    q.towers = Some(vec![Tower::Vision]);
    (q.selectors, q.sites) = (vec![Selector::Cls], vec![Site::Resid]);
    q.layers = "1".parse().unwrap();
    q.shard = (1, 2);
    assert!(extract(&q, &Quiet).unwrap().store_complete, "the store's own plan finishes it");
}

/// Every part file under a store, with its modification time and bytes.
fn part_files(root: &Path) -> Vec<(std::path::PathBuf, std::time::SystemTime, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("acts")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), fs::metadata(&path).unwrap().modified().unwrap(), fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Two stores hold the same partitions, rows and tokens.
fn assert_same_stores(a: &Path, b: &Path) {
    let (x, y) = (Store::open(a).unwrap(), Store::open(b).unwrap());
    assert_eq!(x.partitions().unwrap(), y.partitions().unwrap());
    for p in x.partitions().unwrap() {
        let (u, v) = (x.load(p).unwrap(), y.load(p).unwrap());
        assert_eq!((u.sample, u.pos, u.matrix), (v.sample, v.pos, v.matrix), "{p}");
    }
    let spec = |s: &Store| s.manifest.as_ref().unwrap().extraction.clone().unwrap();
    assert_eq!(spec(&x), spec(&y), "the manifests record the same plan");
    let tokens = |r: &Path| mmprobe_store::store::read_parquet(&r.join("tokens.parquet")).ok();
    assert_eq!(tokens(a), tokens(b), "tokens.parquet");
}

#[test]
fn a_complete_store_takes_more_towers_layers_and_selectors_without_redoing_its_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 5);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    (o.towers, o.sites, o.selectors) = (Some(vec![Tower::Vision]), vec![Site::Resid], vec![Selector::Cls]);
    o.layers = "1".parse().unwrap();
    extract(&o, &Quiet).unwrap();
    let before = part_files(&out);
    assert_eq!(before.len(), 2, "one partition, chunks of 3");

    let mut p = o.clone();
    (p.towers, p.selectors) =
        (Some(vec![Tower::Vision, Tower::Text]), vec![Selector::Cls, Selector::Eos, Selector::All]);
    p.layers = "1,2".parse().unwrap();
    let s = extract(&p, &Quiet).unwrap();
    assert!(s.store_complete && s.samples_run == 5, "{s:?}");
    // vision: layers 1, 2 x cls, all; text: 1, 2 x eos, all; the store had vision 1 cls.
    assert_eq!(s.partitions, 7, "{s:?}");
    assert!(s.notes.iter().any(|n| n.contains("adding 7 partitions to the 1")), "{:?}", s.notes);
    for (path, modified, bytes) in &before {
        assert_eq!(&fs::metadata(path).unwrap().modified().unwrap(), modified, "{} was rewritten", path.display());
        assert_eq!(&fs::read(path).unwrap(), bytes);
    }
    // The store is what one run of the joined plan makes.
    let mut u = p.clone();
    u.out = tmp.path().join("at-once");
    extract(&u, &Quiet).unwrap();
    assert_same_stores(&out, &u.out);

    // Asking for what it holds extracts nothing.
    let s = extract(&o, &Quiet).unwrap();
    assert!(s.store_complete && s.samples_run == 0 && s.rows_written == 0, "{s:?}");
    assert!(s.notes.iter().any(|n| n.contains("nothing to extract")), "{:?}", s.notes);
}

#[test]
fn an_interrupted_addition_resumes_to_the_same_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 9);
    let out = tmp.path().join("store");
    let mut o = options("tiny-a", &data, &out);
    (o.towers, o.sites, o.selectors) = (Some(vec![Tower::Vision]), vec![Site::Embeds], vec![Selector::Pooled]);
    extract(&o, &Quiet).unwrap();
    let mut p = o.clone();
    (p.towers, p.sites) = (Some(vec![Tower::Vision, Tower::Text]), vec![Site::Embeds]);
    // The addition fails writing its second chunk.
    let text = Partition { tower: Tower::Text, site: Site::Embeds, layer: 0, selector: Selector::Pooled };
    let blocked = mmprobe_store::layout::tmp_path(&text.part(&out, 0, 1));
    fs::create_dir_all(&blocked).unwrap();
    let e = extract_within(&p, 60).unwrap_err().to_string();
    assert!(e.contains(&*blocked.to_string_lossy()), "{e}");
    let m = Store::open(&out).unwrap().manifest.unwrap();
    assert!(m.shards.is_none_or(|s| s.completed.is_empty()), "an unfinished addition leaves the store incomplete");
    fs::remove_dir(&blocked).unwrap();
    let s = extract_within(&p, 60).unwrap();
    assert!(s.store_complete && s.samples_resumed == 3 && s.samples_run == 6, "{s:?}");
    let mut u = p.clone();
    u.out = tmp.path().join("at-once");
    extract(&u, &Quiet).unwrap();
    assert_same_stores(&out, &u.out);
}

#[test]
fn a_store_dtype_and_compression_are_kept_and_read_back_as_floats() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 5);
    let mut o = options("tiny-a", &data, &tmp.path().join("f32"));
    (o.towers, o.sites, o.selectors) = (Some(vec![Tower::Vision]), vec![Site::Resid], vec![Selector::Cls]);
    extract(&o, &Quiet).unwrap();
    let exact = Store::open(&o.out).unwrap();
    for (dtype, compression) in [("bf16", "lz4"), ("f16", "none"), ("f32", "zstd")] {
        let mut s = o.clone();
        s.out = tmp.path().join(format!("{dtype}-{compression}"));
        s.format = mmprobe_store::PartFormat::new(dtype.parse().unwrap(), compression.parse().unwrap());
        extract(&s, &Quiet).unwrap();
        let store = Store::open(&s.out).unwrap();
        let spec = store.manifest.as_ref().unwrap().extraction.clone().unwrap();
        assert_eq!((spec.store_dtype.to_string(), spec.compression.to_string()), (dtype.into(), compression.into()));
        for p in exact.partitions().unwrap() {
            let (want, got) = (exact.load(p).unwrap(), store.load(p).unwrap());
            // Rounded to the storage precision: bf16 keeps 8 significant bits, f16 11.
            let rel = match dtype {
                "bf16" => 2f32.powi(-8),
                "f16" => 2f32.powi(-11),
                _ => 0.0,
            };
            for (a, b) in want.matrix.iter().zip(got.matrix.iter()) {
                assert!((a - b).abs() <= rel * a.abs(), "{dtype} {p}: {a} stored as {b}");
            }
            if dtype != "f32" {
                assert_ne!(want.matrix, got.matrix, "{dtype}: the rows are rounded");
            }
        }
        // A store keeps its format: another is refused, saying so.
        let mut other = s.clone();
        other.format = mmprobe_store::PartFormat::default();
        if dtype != "f32" {
            let e = extract(&other, &Quiet).unwrap_err().to_string();
            assert!(e.contains(&format!("--store-dtype {dtype}")) && e.contains("--force"), "{e}");
        }
    }
}
