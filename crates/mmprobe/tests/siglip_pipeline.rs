//! The whole pipeline on SigLIP stores (scripts/fixtures/siglip): extract ->
//! probe -> geometry -> report, with the attention-pooling head (image embeds,
//! so a modality gap and retrieval) and without it (no image embeds: those are
//! skipped, the rest runs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mmprobe"));
    c.env_remove("RUST_BACKTRACE");
    c
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures")
}

fn dataset(dir: &Path, rows: usize) -> PathBuf {
    let images = ["rgb_50x41.png", "grey_70x20.png", "rgba_64x64.png", "palette_33x45.png", "small_12x9.png"];
    let colours = ["red", "blue", "green"];
    let mut csv = String::from("id,image,text,colour\n");
    for i in 0..rows {
        let img = fixtures().join("images").join(images[i % images.len()]);
        let c = colours[i % 3];
        csv += &format!("s{i},{},a photo of a {c} thing number {i},{c}\n", img.display());
    }
    let path = dir.join("data.csv");
    fs::write(&path, csv).unwrap();
    path
}

fn run(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn extract_probe_geometry_and_report_run_on_siglip_stores() {
    for (model, head) in [("siglip1-head", true), ("siglip2-nohead", false)] {
        let tmp = tempfile::tempdir().unwrap();
        let data = dataset(tmp.path(), 15);
        let (store, results, report) =
            (tmp.path().join("store"), tmp.path().join("results"), tmp.path().join("report"));
        let (s, r) = (store.to_str().unwrap(), results.to_str().unwrap());
        let m = fixtures().join("siglip").join(model);
        let said = run(&[
            "extract",
            "--model",
            m.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            s,
            "--sites",
            "resid,embeds",
        ]);
        assert!(said.contains("(complete)"), "{model}: {said}");
        let parts = mmprobe_store::Store::open(&store).unwrap().partitions().unwrap();
        let names: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        assert!(names.iter().any(|p| p.contains("tower=vision/site=resid") && p.ends_with("selector=mean")));
        assert!(names.iter().any(|p| p.contains("tower=text/site=resid") && p.ends_with("selector=eos")));
        assert_eq!(names.iter().any(|p| p.contains("tower=vision/site=embeds")), head, "{model}: {names:?}");
        assert!(!names.iter().any(|p| p.ends_with("selector=cls")), "{model}: no CLS token");

        run(&["probe", "--store", s, "--concept", "colour", "--sites", "resid", "--repeats", "2", "--out", r]);
        let said =
            run(&["geometry", "--store", s, "--concept", "colour", "--cka-rows", "10", "--folds", "3", "--out", r]);
        let g: serde_json::Value = serde_json::from_slice(&fs::read(results.join("geometry.json")).unwrap()).unwrap();
        if head {
            assert_eq!(g["pairs"], 15, "{model}: {g}");
            let gap = g["modality_gap"].as_f64().unwrap();
            assert!(gap.is_finite() && gap > 0.0, "{model}: {g}");
            assert!(g["retrieval_i2t_r1"].as_f64().is_some(), "{model}: {g}");
        } else {
            assert!(g["modality_gap"].is_null() && g["pairs"] == 0, "{model}: {g}");
            assert!(said.contains("no paired vision/text embeds"), "{model}: {said}");
        }
        assert!(results.join("cka.parquet").is_file(), "{model}: CKA runs either way");
        run(&["report", "--store", s, "--results", r, "--out", report.to_str().unwrap()]);
        assert!(report.join("report.html").is_file(), "{model}");
    }
}
