//! Qwen2-VL and Qwen2.5-VL against transformers (scripts/fixtures/make_qwen2vl.py):
//! the processor's patches and grids, the prompts, get_rope_index, every
//! vision and decoder state of a padded batch mixing image sizes, each
//! prompt alone, and the logit lens.

mod common;

use std::path::PathBuf;

use common::{assert_close, device, fixtures, max_abs_diff};
use mmprobe_extract::layers::{CpuLinear, with_cpu_linear};
use mmprobe_extract::qwen2vl::{
    LoadedQwen2Vl, Qwen2VlImageProcessor, Qwen2VlTokenizer, VisionPlan, chat_prompt, processor::open_rgb_on_white,
    rope_index,
};
use mmprobe_extract::weights::Checkpoint;
use mmprobe_extract::{Capture, DType, SiteRequest};
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;
const MODELS: [&str; 4] = ["qwen2-vl", "qwen2-vl-hub", "qwen2.5-vl", "qwen2.5-vl-hub"];

fn dir(name: &str) -> PathBuf {
    fixtures().join("qwen2vl").join(name)
}

fn meta(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir(name).join("reference.json")).unwrap()).unwrap()
}

fn reference(name: &str) -> Checkpoint {
    let d = dir(name);
    Checkpoint::open_files(&d, [d.join("reference.safetensors")]).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).reshape([-1])).unwrap()
}

fn grids(r: &Checkpoint) -> Vec<[i64; 3]> {
    ints(&r.tensor("image_grid_thw").unwrap()).chunks(3).map(|g| [g[0], g[1], g[2]]).collect()
}

/// The prompts as the fixture renders them: chat prompts built here, raw ones as given.
fn prompts(m: &serde_json::Value) -> Vec<String> {
    m["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            if let Some(raw) = p.get("raw") {
                return raw.as_str().unwrap().to_string();
            }
            let msgs = p["messages"].as_array().unwrap();
            let system = msgs.iter().find(|m| m["role"] == "system").map(|m| m["content"].as_str().unwrap());
            let user = msgs.iter().find(|m| m["role"] == "user").unwrap()["content"].as_array().unwrap();
            let images = user.iter().filter(|c| c["type"] == "image").count();
            let text: String = user.iter().filter_map(|c| c.get("text").and_then(|t| t.as_str())).collect();
            chat_prompt(system, &text, images)
        })
        .collect()
}

/// Row `i`'s real positions of a padded [B, T, D] state, as [T_i, D].
fn unpadded(h: &Tensor, mask: &Tensor, i: i64) -> Tensor {
    let keep = mask.get(i).ne(0).nonzero().squeeze_dim(1).to_device(h.device());
    h.get(i).index_select(0, &keep)
}

#[test]
fn patches_and_grids_equal_the_processor() {
    for name in MODELS {
        let m = meta(name);
        let r = reference(name);
        let proc = Qwen2VlImageProcessor::from_dir(&dir(name)).unwrap();
        assert_eq!(
            (proc.min_pixels, proc.max_pixels),
            (m["min_pixels"].as_u64().unwrap(), m["max_pixels"].as_u64().unwrap())
        );
        for g in m["grids"].as_array().unwrap() {
            let (h, w) = (g["height"].as_u64().unwrap() as usize, g["width"].as_u64().unwrap() as usize);
            let want: Vec<i64> = g["grid_thw"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(proc.grid_thw(h, w).unwrap().to_vec(), want, "{name} grid of {h}x{w}");
            let rs = (g["resized_height"].as_u64().unwrap() as usize, g["resized_width"].as_u64().unwrap() as usize);
            assert_eq!(proc.resized_size(h, w).unwrap(), rs, "{name} resize of {h}x{w}");
        }
        let want_px = r.tensor("pixel_values").unwrap();
        let want_grids = grids(&r);
        let mut rows = Vec::new();
        for (i, f) in m["images"].as_array().unwrap().iter().enumerate() {
            let img = open_rgb_on_white(&fixtures().join("qwen2vl/images").join(f.as_str().unwrap())).unwrap();
            let p = proc.process(&img).unwrap();
            assert_eq!(p.grid_thw, want_grids[i], "{name} image {i} grid");
            rows.push(Tensor::from_slice(&p.values).view([p.patches(), -1]));
        }
        let got = Tensor::cat(&rows, 0);
        let d = max_abs_diff(&got, &want_px);
        println!("{name}: pixel_values max |diff| {d:e}");
        assert_eq!(d, 0.0, "{name} pixel_values");
    }
}

#[test]
fn prompts_positions_and_vision_bookkeeping_equal_transformers() {
    for name in MODELS {
        let m = meta(name);
        let r = reference(name);
        let l = LoadedQwen2Vl::load(&dir(name), tch::Device::Cpu, DType::F32).unwrap();
        assert!(l.unused.is_empty(), "{name}: unused {:?}", l.unused);
        let c = &l.model.config;
        let tok = Qwen2VlTokenizer::from_dir(&dir(name), c.image_token_id, c.text.pad_token_id).unwrap();
        assert_eq!(tok.left_padding, m["padding_side"] == "left", "{name}");
        let g = grids(&r);
        let ps = prompts(&m);
        for (i, p) in ps.iter().enumerate() {
            assert_eq!(p, m["rendered"][i].as_str().unwrap(), "{name} prompt {i} rendered");
        }
        let merged: Vec<usize> = g.iter().map(|g| (g.iter().product::<i64>() / 4) as usize).collect();
        let rows: Vec<_> = ps.iter().zip(&merged).map(|(p, &n)| tok.encode(p, &[n]).unwrap()).collect();
        for (i, row) in rows.iter().enumerate() {
            let want = ints(&r.tensor(&format!("p{i}.input_ids")).unwrap());
            assert_eq!(row.iter().map(|t| t.id as i64).collect::<Vec<_>>(), want, "{name} prompt {i} ids");
            let texts: Vec<&str> = m["tokens"][i].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
            assert_eq!(row.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), texts, "{name} prompt {i} tokens");
            // Alone: get_rope_index of the prompt.
            let ids: Vec<i64> = row.iter().map(|t| t.id as i64).collect();
            let (pos, _) = rope_index(&ids, &vec![1; ids.len()], (1, ids.len()), c.image_token_id, &g[i..=i]).unwrap();
            assert_eq!(pos, ints(&r.tensor(&format!("p{i}.position_ids")).unwrap()), "{name} prompt {i} positions");
        }
        let b = tok.pad(rows);
        assert_eq!(ints(&b.input_ids), ints(&r.tensor("batch.input_ids").unwrap()), "{name} batch ids");
        assert_eq!(ints(&b.attention_mask), ints(&r.tensor("batch.attention_mask").unwrap()), "{name} batch mask");
        let mm: Vec<i64> = ints(&b.input_ids).iter().map(|&id| (id == c.image_token_id) as i64).collect();
        assert_eq!(mm, ints(&r.tensor("batch.mm_token_type_ids").unwrap()), "{name} mm_token_type_ids");
        let (bs, t) = b.input_ids.size2().unwrap();
        let (pos, deltas) =
            rope_index(&ints(&b.input_ids), &ints(&b.attention_mask), (bs as usize, t as usize), c.image_token_id, &g)
                .unwrap();
        assert_eq!(pos, ints(&r.tensor("batch.position_ids").unwrap()), "{name} batch position ids");
        assert_eq!(deltas, ints(&r.tensor("batch.rope_deltas").unwrap()), "{name} rope deltas");
        let pos_t = l.model.position_ids(&b.input_ids, &b.attention_mask, &g).unwrap();
        assert_eq!(ints(&pos_t), pos, "{name} position ids tensor");

        // The vision tower's bookkeeping.
        let plan = l.model.visual.plan(&g);
        let cells: Vec<i64> = plan.cells.iter().flat_map(|&(r, c)| [r, c]).collect();
        assert_eq!(cells, ints(&r.tensor("vision.position_ids").unwrap()), "{name} vision position ids");
        let mut cu = vec![0];
        cu.extend(plan.images.iter().map(|(s, l)| s + l));
        assert_eq!(cu, ints(&r.tensor("vision.cu_seqlens").unwrap()), "{name} cu_seqlens");
        if r.contains("vision.window_index") {
            assert_eq!(plan.window_index, ints(&r.tensor("vision.window_index").unwrap()), "{name} window index");
            let mut cu = vec![0];
            cu.extend(plan.windows.iter().map(|(s, l)| s + l));
            assert_eq!(cu, ints(&r.tensor("vision.cu_window_seqlens").unwrap()), "{name} cu_window_seqlens");
        } else {
            assert_eq!(plan, VisionPlan { window_index: vec![], windows: vec![], ..plan.clone() });
        }
    }
}

fn check_states(name: &str, flip_padding: bool) -> f64 {
    let m = meta(name);
    let r = reference(name);
    let l = LoadedQwen2Vl::load(&dir(name), device(), DType::F32).unwrap();
    let model = &l.model;
    let c = &model.config;
    let mut tok = Qwen2VlTokenizer::from_dir(&dir(name), c.image_token_id, c.text.pad_token_id).unwrap();
    tok.left_padding ^= flip_padding;
    let g = grids(&r);
    let merged: Vec<usize> = g.iter().map(|g| (g.iter().product::<i64>() / 4) as usize).collect();
    let ps = prompts(&m);
    let b = tok.pad(ps.iter().zip(&merged).map(|(p, &n)| tok.encode(p, &[n]).unwrap()).collect());
    let nv = c.vision.depth;
    let n = c.text.num_hidden_layers;
    let px = r.tensor("pixel_values").unwrap().to_device(device());
    let mut vision = Capture::new(SiteRequest::everything(nv));
    let mut dec = Capture::new(SiteRequest { embeds: false, raw: [n].into(), ..SiteRequest::everything(n) });
    let (ids, mask) = (b.input_ids.to_device(device()), b.attention_mask.to_device(device()));
    let pos = model.position_ids(&ids, &mask, &g).unwrap();
    let _ = tch::no_grad(|| {
        let embeds = model.encode_images(&px, &g, &mut vision);
        model.decode(&ids, &mask, &pos, Some(&embeds), &mut dec)
    });
    let mut worst = 0f64;
    let mut check = |what: String, got: &Tensor, want: &Tensor| {
        let d = max_abs_diff(got, want);
        worst = worst.max(d);
        assert!(d <= TOL, "{what}: max |diff| = {d:e} > {TOL:e}");
    };
    for lay in 0..=nv {
        let want = r.tensor(&format!("vision.resid.{lay}")).unwrap();
        check(format!("{name} vision resid {lay}"), &vision.resid[&lay], &want);
    }
    for lay in 1..=nv {
        for (site, map) in [("attn", &vision.attn), ("mlp", &vision.mlp)] {
            let want = r.tensor(&format!("vision.{site}.{lay}")).unwrap();
            check(format!("{name} vision {site} {lay}"), &map[&lay], &want);
        }
    }
    check(format!("{name} vision embeds"), vision.embeds.as_ref().unwrap(), &r.tensor("vision.embeds").unwrap());
    let side = if tok.left_padding { "left" } else { "right" };
    let ref_mask = r.tensor("batch.attention_mask").unwrap();
    for i in 0..ps.len() as i64 {
        for lay in 0..=n {
            let got = unpadded(&dec.resid[&lay], &mask, i);
            let want = r.tensor(&format!("p{i}.decoder.resid.{lay}")).unwrap();
            check(format!("{name} ({side} padded) p{i} decoder resid {lay}"), &got, &want);
            let batch_want = unpadded(&r.tensor(&format!("batch.decoder.resid.{lay}")).unwrap(), &ref_mask, i);
            check(format!("{name} ({side} padded) p{i} batch decoder resid {lay}"), &got, &batch_want);
        }
        for lay in 1..=n {
            for (site, map) in [("attn", &dec.attn), ("mlp", &dec.mlp)] {
                let got = unpadded(&map[&lay], &mask, i);
                let want = r.tensor(&format!("p{i}.decoder.{site}.{lay}")).unwrap();
                check(format!("{name} ({side} padded) p{i} decoder {site} {lay}"), &got, &want);
            }
        }
        let raw = unpadded(&dec.raw[&n], &mask, i);
        check(format!("{name} p{i} decoder raw {n}"), &raw, &r.tensor(&format!("p{i}.decoder.raw.{n}")).unwrap());
        // Logits at the last token, and the logit lens's top 5 per layer.
        let last = raw.size()[0] - 1;
        let logits = model.logits(&raw.get(last));
        check(format!("{name} p{i} logits"), &logits, &r.tensor(&format!("p{i}.logits_last")).unwrap());
        let want_top = r.tensor(&format!("p{i}.lens.last.top5")).unwrap();
        for lay in 0..=n {
            let h = if lay < n { unpadded(&dec.resid[&lay], &mask, i).get(last) } else { raw.get(last) };
            let top = model.logits(&h).topk(5, -1, true, true).1;
            assert_eq!(ints(&top), ints(&want_top.get(lay as i64)), "{name} p{i} lens top-5 layer {lay}");
        }
    }
    worst
}

#[test]
fn padded_batch_of_mixed_sizes_matches_transformers_and_each_prompt_alone() {
    for name in MODELS {
        let worst = check_states(name, false);
        println!("{name}: every vision and decoder state within {worst:e}");
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
fn each_image_alone_gives_its_rows_of_the_batch() {
    for name in MODELS {
        let r = reference(name);
        let l = LoadedQwen2Vl::load(&dir(name), device(), DType::F32).unwrap();
        let model = &l.model;
        let g = grids(&r);
        let px = r.tensor("pixel_values").unwrap().to_device(device());
        let nv = model.config.vision.depth;
        let req = SiteRequest { resid: (0..=nv).collect(), embeds: true, ..Default::default() };
        let mut all = Capture::new(req.clone());
        let _ = tch::no_grad(|| model.encode_images(&px, &g, &mut all));
        let (mut row, mut tok) = (0i64, 0i64);
        for gi in &g {
            let np = gi.iter().product::<i64>();
            let mut one = Capture::new(req.clone());
            let _ = tch::no_grad(|| model.encode_images(&px.narrow(0, row, np), std::slice::from_ref(gi), &mut one));
            for lay in 0..=nv {
                let want = all.resid[&lay].narrow(0, row, np);
                assert_close(&format!("{name} image at row {row} resid {lay}"), &one.resid[&lay], &want, 1e-5);
            }
            let want = all.embeds.as_ref().unwrap().narrow(0, tok, np / 4);
            assert_close(&format!("{name} image at row {row} embeds"), one.embeds.as_ref().unwrap(), &want, 1e-5);
            row += np;
            tok += np / 4;
        }
    }
}

fn write_dataset(dir_: &std::path::Path, name: &str) -> PathBuf {
    let m = meta(name);
    let mut csv = String::from("id,image,prompt\n");
    for (i, (p, img)) in prompts(&m).iter().zip(m["images"].as_array().unwrap()).enumerate() {
        let path = fixtures().join("qwen2vl/images").join(img.as_str().unwrap());
        csv += &format!("s{i},{},\"{}\"\n", path.display(), p.replace('"', "\"\""));
    }
    let path = dir_.join("data.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

/// `mmprobe extract` on each checkpoint: decoder `all` rows equal each prompt
/// alone, vision `mean` rows the mean of each image's patch rows, in batches
/// of two that mix image sizes.
#[test]
fn extraction_stores_decoder_and_vision_states_like_transformers() {
    use mmprobe_extract::{ExtractOptions, Quiet, RunOptions, Selector, Site, Tower, extract};
    use mmprobe_store::{Partition, Store};
    for name in MODELS {
        let r = reference(name);
        let tmp = tempfile::tempdir().unwrap();
        let store_dir = tmp.path().join("store");
        let opts = ExtractOptions {
            towers: Some(vec![Tower::Vision, Tower::Decoder]),
            sites: vec![Site::Resid, Site::Embeds],
            selectors: vec![Selector::Mean, Selector::Last, Selector::All],
            run: RunOptions { device: common::device_choice(), dtype: DType::F32, batch_size: 2, ..Default::default() },
            chunk_size: 3,
            logit_lens: Some(5),
            ..ExtractOptions::new(dir(name), write_dataset(tmp.path(), name), store_dir.clone())
        };
        extract(&opts, &Quiet).unwrap();
        let store = Store::open(&store_dir).unwrap();
        check_tokens(name, &store_dir.join("tokens.parquet"));
        check_lens(name, &store_dir.join("logit_lens.parquet"));
        let n = (0..).take_while(|l| r.contains(&format!("p0.decoder.resid.{l}"))).count() - 1;
        for layer in 0..=n {
            let acts = store
                .load(Partition { tower: Tower::Decoder, site: Site::Resid, layer, selector: Selector::All })
                .unwrap();
            for i in 0..3u32 {
                let rows: Vec<usize> = (0..acts.sample.len()).filter(|&k| acts.sample[k] == i).collect();
                let pos: Vec<i32> = rows.iter().map(|&k| acts.pos[k]).collect();
                assert_eq!(pos, (0..rows.len() as i32).collect::<Vec<_>>(), "{name} sample {i} positions");
                let got: Vec<f32> = rows.iter().flat_map(|&k| acts.matrix.row(k).to_vec()).collect();
                let got = Tensor::from_slice(&got).view([rows.len() as i64, -1]);
                let want = r.tensor(&format!("p{i}.decoder.resid.{layer}")).unwrap();
                assert_close(&format!("{name} store decoder all resid {layer} sample {i}"), &got, &want, TOL);
            }
        }
        let g = grids(&r);
        let nv = (0..).take_while(|l| r.contains(&format!("vision.resid.{l}"))).count() - 1;
        for layer in 0..=nv {
            let acts = store
                .load(Partition { tower: Tower::Vision, site: Site::Resid, layer, selector: Selector::Mean })
                .unwrap();
            let all = r.tensor(&format!("vision.resid.{layer}")).unwrap();
            let mut row = 0;
            for (i, gi) in g.iter().enumerate() {
                let np = gi.iter().product::<i64>();
                let want = all.narrow(0, row, np).mean_dim(0, false, Kind::Float);
                let k = acts.sample.iter().position(|&s| s == i as u32).unwrap();
                let got = Tensor::from_slice(&acts.matrix.row(k).to_vec());
                assert_close(&format!("{name} store vision mean resid {layer} image {i}"), &got, &want, TOL);
                row += np;
            }
        }
        check_embeds(name, &store, &r);
    }
}

/// A store made without the vision embeds takes them later (an addition
/// that extracts only them), and its manifest says those embeds are tokens.
#[test]
fn a_store_takes_the_merger_rows_later() {
    use mmprobe_extract::{ExtractOptions, LayerSpec, Quiet, RunOptions, Selector, Site, Tower, extract};
    let name = "qwen2.5-vl";
    let r = reference(name);
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let mut opts = ExtractOptions {
        towers: Some(vec![Tower::Vision, Tower::Decoder]),
        sites: vec![Site::Resid],
        layers: LayerSpec::Indices(vec![0]),
        selectors: vec![Selector::Mean, Selector::All],
        run: RunOptions { device: common::device_choice(), dtype: DType::F32, batch_size: 2, ..Default::default() },
        chunk_size: 3,
        ..ExtractOptions::new(dir(name), write_dataset(tmp.path(), name), store_dir.clone())
    };
    extract(&opts, &Quiet).unwrap();
    let store = mmprobe_store::Store::open(&store_dir).unwrap();
    assert!(store.manifest.as_ref().unwrap().extraction.as_ref().unwrap().per_token_embeds.is_empty());
    opts.sites = vec![Site::Resid, Site::Embeds];
    extract(&opts, &Quiet).unwrap();
    let store = mmprobe_store::Store::open(&store_dir).unwrap();
    assert_eq!(store.manifest.as_ref().unwrap().extraction.as_ref().unwrap().per_token_embeds, ["vision"]);
    check_embeds(name, &store, &r);
}

/// The vision tower's `embeds` rows: the merger's output, one `all` row per
/// merged token (pos j = patches 4j..4j+3) equal to transformers', the same
/// rows the decoder reads at its image positions (its layer-0 rows there),
/// and `mean` their average; `pooled` gives none.
fn check_embeds(name: &str, store: &mmprobe_store::Store, r: &Checkpoint) {
    use mmprobe_extract::{Selector, Site, Tower};
    use mmprobe_store::Partition;
    let m = meta(name);
    let part = |site, selector| Partition { tower: Tower::Vision, site, layer: 0, selector };
    let all = store.load(part(Site::Embeds, Selector::All)).unwrap();
    let mean = store.load(part(Site::Embeds, Selector::Mean)).unwrap();
    assert!(store.load(part(Site::Embeds, Selector::Pooled)).is_err(), "{name}: no pooled embeds");
    let dec0 =
        store.load(Partition { tower: Tower::Decoder, site: Site::Resid, layer: 0, selector: Selector::All }).unwrap();
    let want_all = r.tensor("vision.embeds").unwrap();
    let mut row = 0;
    for (i, gi) in grids(r).iter().enumerate() {
        let merged = gi.iter().product::<i64>() / 4;
        let rows: Vec<usize> = (0..all.sample.len()).filter(|&k| all.sample[k] == i as u32).collect();
        let pos: Vec<i32> = rows.iter().map(|&k| all.pos[k]).collect();
        assert_eq!(pos, (0..merged as i32).collect::<Vec<_>>(), "{name} image {i} merged positions");
        let got: Vec<f32> = rows.iter().flat_map(|&k| all.matrix.row(k).to_vec()).collect();
        let got = Tensor::from_slice(&got).view([merged, -1]);
        let want = want_all.narrow(0, row, merged);
        assert_close(&format!("{name} store vision embeds all image {i}"), &got, &want, TOL);
        // What the decoder receives: its layer-0 rows at the image positions, in order.
        let image_pos: Vec<i32> = m["tokens"][i]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, t)| t.as_str() == Some("<|image_pad|>"))
            .map(|(p, _)| p as i32)
            .collect();
        let dec: Vec<f32> = image_pos
            .iter()
            .flat_map(|&p| {
                let k = (0..dec0.sample.len()).find(|&k| dec0.sample[k] == i as u32 && dec0.pos[k] == p).unwrap();
                dec0.matrix.row(k).to_vec()
            })
            .collect();
        let dec = Tensor::from_slice(&dec).view([image_pos.len() as i64, -1]);
        assert_close(&format!("{name} decoder layer 0 at image {i}'s tokens"), &dec, &got, 1e-6);
        let k = mean.sample.iter().position(|&s| s == i as u32).unwrap();
        let got_mean = Tensor::from_slice(&mean.matrix.row(k).to_vec());
        let want_mean = want.mean_dim(0, false, Kind::Float);
        assert_close(&format!("{name} store vision embeds mean image {i}"), &got_mean, &want_mean, TOL);
        row += merged;
    }
}

/// tokens.parquet: the processor's tokens per decoder position, each image
/// token's merged grid cell in raster order, and each vision row's patch cell.
fn check_tokens(name: &str, path: &std::path::Path) {
    let m = meta(name);
    let r = reference(name);
    let t = mmprobe_store::store::read_parquet(path).unwrap();
    let col_i32 = |c: &str| t.column(c).unwrap().i32().unwrap().clone();
    let (tower, sample) = (t.column("tower").unwrap().str().unwrap(), t.column("sample").unwrap().u32().unwrap());
    let (pos, text) = (col_i32("pos"), t.column("token").unwrap().str().unwrap());
    let (gr, gc, gt) = (col_i32("grid_row"), col_i32("grid_col"), col_i32("grid_t"));
    let cells = ints(&r.tensor("vision.position_ids").unwrap());
    let g = grids(&r);
    let mut vision_row = 0usize;
    for i in 0..3u32 {
        let rows: Vec<usize> =
            (0..t.height()).filter(|&k| tower.get(k) == Some("decoder") && sample.get(k) == Some(i)).collect();
        let want = m["tokens"][i as usize].as_array().unwrap();
        assert_eq!(rows.len(), want.len(), "{name} sample {i} token count");
        let mw = g[i as usize][2] / 2;
        let mut k = 0;
        for (j, &row) in rows.iter().enumerate() {
            assert_eq!((pos.get(row), text.get(row)), (Some(j as i32), want[j].as_str()), "{name} sample {i} pos {j}");
            if want[j] == "<|image_pad|>" {
                let cell = (gr.get(row), gc.get(row), gt.get(row));
                assert_eq!(cell, (Some((k / mw) as i32), Some((k % mw) as i32), Some(0)), "{name} {i} image token {k}");
                k += 1;
            } else {
                assert_eq!(gr.get(row), None, "{name} sample {i} text pos {j} has no grid cell");
            }
        }
        let rows: Vec<usize> =
            (0..t.height()).filter(|&k| tower.get(k) == Some("vision") && sample.get(k) == Some(i)).collect();
        assert_eq!(rows.len() as i64, g[i as usize].iter().product::<i64>(), "{name} sample {i} vision rows");
        for (j, &row) in rows.iter().enumerate() {
            let (want_r, want_c) = (cells[2 * vision_row] as i32, cells[2 * vision_row + 1] as i32);
            assert_eq!(pos.get(row), Some(j as i32));
            assert_eq!((gr.get(row), gc.get(row)), (Some(want_r), Some(want_c)), "{name} sample {i} vision row {j}");
            assert_eq!(text.get(row), Some(format!("<patch {want_r},{want_c}>").as_str()));
            vision_row += 1;
        }
    }
}

/// Grid provenance end to end: images with one coloured square at a known
/// patch cell; the vision tower's layer-0 rows found at that cell through
/// tokens.parquet separate the square's colour, rows at a far cell do not.
#[test]
fn tokens_parquet_grid_cells_find_a_coloured_square() {
    use mmprobe_extract::{ExtractOptions, Quiet, RunOptions, Selector, Site, Tower, extract};
    use mmprobe_store::{Partition, Store};
    let tmp = tempfile::tempdir().unwrap();
    // 56 x 56 stays 56 x 56 under qwen2-vl's min_pixels: a 4 x 4 patch grid, no resampling.
    let (cell_r, cell_c) = (1usize, 2usize);
    let colours = [[220u8, 30, 40], [40, 60, 230], [220, 30, 40], [40, 60, 230]];
    let mut csv = String::from("id,image\n");
    for (i, col) in colours.iter().enumerate() {
        let img = image::RgbImage::from_fn(56, 56, |x, y| {
            let inside = (y as usize / 14, x as usize / 14) == (cell_r, cell_c);
            image::Rgb(if inside { *col } else { [120, 130, 140] })
        });
        let path = tmp.path().join(format!("sq{i}.png"));
        img.save(&path).unwrap();
        csv += &format!("s{i},{}\n", path.display());
    }
    let data = tmp.path().join("data.csv");
    std::fs::write(&data, csv).unwrap();
    let out = tmp.path().join("store");
    let opts = ExtractOptions {
        towers: Some(vec![Tower::Vision]),
        sites: vec![Site::Resid],
        selectors: vec![Selector::All],
        run: RunOptions { device: common::device_choice(), dtype: DType::F32, batch_size: 3, ..Default::default() },
        chunk_size: 4,
        ..ExtractOptions::new(dir("qwen2-vl"), data, out.clone())
    };
    extract(&opts, &Quiet).unwrap();
    let t = mmprobe_store::store::read_parquet(&out.join("tokens.parquet")).unwrap();
    let col_i32 = |c: &str| t.column(c).unwrap().i32().unwrap().clone();
    let (sample, pos) = (t.column("sample").unwrap().u32().unwrap().clone(), col_i32("pos"));
    let (gr, gc) = (col_i32("grid_row"), col_i32("grid_col"));
    let acts = Store::open(&out)
        .unwrap()
        .load(Partition { tower: Tower::Vision, site: Site::Resid, layer: 0, selector: Selector::All })
        .unwrap();
    // The layer-0 row of sample i at cell (r, c), found through tokens.parquet.
    let row_at = |i: u32, r: i32, c: i32| -> Tensor {
        let k = (0..t.height())
            .find(|&k| sample.get(k) == Some(i) && gr.get(k) == Some(r) && gc.get(k) == Some(c))
            .expect("a token row at the cell");
        let p = pos.get(k).unwrap();
        let a = (0..acts.sample.len()).find(|&a| acts.sample[a] == i && acts.pos[a] == p).expect("an activation row");
        Tensor::from_slice(&acts.matrix.row(a).to_vec())
    };
    let square: Vec<Tensor> = (0..4).map(|i| row_at(i, cell_r as i32, cell_c as i32)).collect();
    let far: Vec<Tensor> = (0..4).map(|i| row_at(i, 3, 0)).collect();
    let same_colour = max_abs_diff(&square[0], &square[2]).max(max_abs_diff(&square[1], &square[3]));
    let other_colour = max_abs_diff(&square[0], &square[1]);
    assert!(same_colour < 1e-4 && other_colour > 1e-2, "square cell: same {same_colour:e}, other {other_colour:e}");
    let far_diff = (1..4).map(|i| max_abs_diff(&far[0], &far[i])).fold(0.0, f64::max);
    assert!(far_diff < 1e-4, "a far cell does not see the square: {far_diff:e}");
}

/// logit_lens.parquet: transformers' top-5 next tokens at the last position, per layer.
fn check_lens(name: &str, path: &std::path::Path) {
    let r = reference(name);
    let lens = mmprobe_store::store::read_parquet(path).unwrap();
    let col_u32 = |c: &str| lens.column(c).unwrap().u32().unwrap().clone();
    let (ls, ll, lr) = (col_u32("sample"), col_u32("layer"), col_u32("rank"));
    let lsel = lens.column("selector").unwrap().str().unwrap();
    let lid = lens.column("token_id").unwrap().i64().unwrap();
    let ltok = lens.column("token").unwrap().str().unwrap();
    for i in 0..3u32 {
        let want = r.tensor(&format!("p{i}.lens.last.top5")).unwrap();
        for layer in 0..want.size()[0] {
            let mut got: Vec<(u32, i64, String)> = (0..lens.height())
                .filter(|&k| ls.get(k) == Some(i) && ll.get(k) == Some(layer as u32) && lsel.get(k) == Some("last"))
                .map(|k| (lr.get(k).unwrap(), lid.get(k).unwrap(), ltok.get(k).unwrap().to_string()))
                .collect();
            got.sort();
            // Ids past the tokenizer (a config vocabulary larger than it) have no text.
            let known = meta(name)["tokenizer_size"].as_i64().unwrap();
            assert!(got.iter().all(|(_, id, t)| (*id < known) != t.is_empty()), "{name} lens tokens are named");
            let ids: Vec<i64> = got.into_iter().map(|(_, id, _)| id).collect();
            assert_eq!(ids, ints(&want.get(layer)), "{name} sample {i} lens top-5 at layer {layer}");
        }
    }
}

#[test]
fn info_follows_the_config_and_mismatched_prompts_are_refused() {
    use mmprobe_extract::{ModelInfo, Tower};
    for name in MODELS {
        let m = meta(name);
        let info = ModelInfo::from_dir(&dir(name)).unwrap();
        let (v, d) = (info.tower(Tower::Vision).unwrap(), info.tower(Tower::Decoder).unwrap());
        assert_eq!(
            (v.layers as i64, v.width),
            (m["vision_depth"].as_i64().unwrap(), m["vision_width"].as_i64().unwrap())
        );
        assert_eq!(
            (d.layers as i64, d.width),
            (m["decoder_layers"].as_i64().unwrap(), m["decoder_width"].as_i64().unwrap())
        );
        assert!(!v.cls && info.tower(Tower::Text).is_none(), "{name}");
        // Vision embeds are the merger's tokens: `mean` and `all` rows of the decoder's width, no `pooled`.
        use mmprobe_extract::{Selector, Site};
        assert_eq!(info.width(Tower::Vision, Site::Embeds), Some(d.width), "{name}");
        assert!(
            info.fits(Selector::Mean, Tower::Vision, Site::Embeds)
                && info.fits(Selector::All, Tower::Vision, Site::Embeds)
        );
        assert!(!info.fits(Selector::Pooled, Tower::Vision, Site::Embeds), "{name}");
        assert!(!info.sites(Tower::Decoder).contains(&Site::Embeds), "{name}");
        // inspect's details name the grid an image size gives (224 x 224 under each fixture's pixel range).
        let grid = &info.details.iter().find(|(k, _)| k == "image grid").unwrap().1;
        let g = &m["grids"].as_array().unwrap().iter().find(|g| g["height"] == 224).unwrap()["grid_thw"];
        let want = format!("224x224 -> {}x{} patches", g[1], g[2]);
        assert!(grid.contains(&want), "{name}: {grid} lacks {want}");
    }
    let c = LoadedQwen2Vl::load(&dir("qwen2-vl"), tch::Device::Cpu, DType::F32).unwrap().model.config;
    let tok = Qwen2VlTokenizer::from_dir(&dir("qwen2-vl"), c.image_token_id, None).unwrap();
    let none = tok.encode("What colour is the shape?", &[4]).unwrap_err().to_string();
    assert!(none.contains("0 image token(s) for 1 image(s)"), "{none}");
    let two = format!("{0} and {0}", "<|vision_start|><|image_pad|><|vision_end|>");
    let e = tok.encode(&two, &[4]).unwrap_err().to_string();
    assert!(e.contains("more image tokens"), "{e}");
    assert_eq!(tok.encode(&two, &[4, 6]).unwrap().iter().filter(|t| t.image.is_some()).count(), 10);
}
