//! The `mmprobe` binary end to end: exit codes, one-line errors, and an
//! extraction killed part-way then resumed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mmprobe_store::Store;

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
    let mut csv = String::from("id,image,text,colour\n");
    for i in 0..rows {
        let img = fixtures().join("images").join(images[i % images.len()]);
        csv += &format!("s{i},{},a photo of thing number {i},{}\n", img.display(), ["red", "blue", "green"][i % 3]);
    }
    let path = dir.join("data.csv");
    fs::write(&path, csv).unwrap();
    path
}

fn extract_args(data: &Path, out: &Path) -> Vec<String> {
    let model = fixtures().join("clip/tiny-a");
    [
        "extract",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--sites",
        "resid,mlp,embeds",
        "--select",
        "cls,eos,mean,all,pooled",
        "--batch-size",
        "2",
        "--chunk-size",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn assert_same_store(a: &Path, b: &Path) {
    let (a, b) = (Store::open(a).unwrap(), Store::open(b).unwrap());
    let parts = a.partitions().unwrap();
    assert!(!parts.is_empty());
    assert_eq!(parts, b.partitions().unwrap());
    for p in parts {
        let (x, y) = (a.load(p).unwrap(), b.load(p).unwrap());
        assert_eq!((&x.sample, &x.pos), (&y.sample, &y.pos), "{p}");
        assert_eq!(x.matrix, y.matrix, "{p}");
    }
    assert_eq!(a.samples, b.samples);
}

#[test]
fn killed_extraction_resumes_to_the_same_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 120);
    let whole = tmp.path().join("whole");
    let out = bin().args(extract_args(&data, &whole)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let resumed = tmp.path().join("resumed");
    let mut child =
        bin().args(extract_args(&data, &resumed)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let progress = resumed.join("progress/shard-0-of-1.json");
    let t0 = Instant::now();
    // Kill once a few chunks are recorded, well before the 60 chunks finish.
    loop {
        let done = fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["chunks_done"].as_array().map_or(0, |a| a.len()))
            .unwrap_or(0);
        if done >= 3 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&progress).unwrap()).unwrap();
    let done_at_kill = v["chunks_done"].as_array().unwrap().len();
    assert!(done_at_kill < 60, "the run finished before it was killed");

    // Analysis of the interrupted store says so, in one line, and goes on.
    let res = tmp.path().join("partial-results");
    let out = bin()
        .args(["probe", "--store", resumed.to_str().unwrap(), "--concept", "colour", "--select", "cls"])
        .args(["--repeats", "2", "--folds", "2", "--out", res.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: the store is incomplete: shard 0/1 finished") && stderr.contains("of 60 chunks"),
        "{stderr}"
    );

    let out = bin().args(extract_args(&data, &resumed)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("already done before"), "{stdout}");
    assert_same_store(&whole, &resumed);

    // A part file lost after the run: the rerun notices and extracts that chunk again.
    let lost = resumed.join("acts/tower=vision/site=resid/layer=1/selector=cls/part-000-000007.parquet");
    fs::remove_file(&lost).unwrap();
    let out = bin().args(extract_args(&data, &resumed)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("1 chunk(s) recorded as done had lost part files and were extracted again (chunks [7])"),
        "{stdout}"
    );
    assert!(lost.exists());
    assert_same_store(&whole, &resumed);
    // No temporaries left behind in any partition.
    for p in Store::open(&resumed).unwrap().partitions().unwrap() {
        for e in fs::read_dir(p.dir(&resumed)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(name.starts_with("part-"), "stray file {name} in {p}");
        }
    }
}

#[test]
fn bad_usage_exits_2_and_failures_exit_1_with_one_line() {
    let out = bin().args(["extract", "--model", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().args(["inspect", "--model", "/nonexistent"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("mmprobe: error: /nonexistent is not a model folder"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 2);
    let mut args = extract_args(&data, &tmp.path().join("s"));
    args.extend(["--layers".into(), "1,x".into()]);
    let out = bin().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'x' is not a layer index"));
}

#[test]
fn inspect_describes_both_towers() {
    let out = bin().args(["inspect", "--model"]).arg(fixtures().join("clip/tiny-b")).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("family    clip"), "{s}");
    assert!(s.lines().any(|l| l.starts_with("vision") && l.contains("resid[0..=3]")), "{s}");
    assert!(s.lines().any(|l| l.starts_with("text") && l.split_whitespace().nth(4) == Some("32")), "{s}");
    assert!(s.contains("embeds    width 12"), "{s}");
}

#[test]
fn inspect_and_extract_take_a_llava_folder_with_the_same_flags() {
    let model = fixtures().join("llava/llava-gqa");
    let out = bin().args(["inspect", "--model"]).arg(&model).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.contains("family    llava"), "{s}");
    assert!(s.lines().any(|l| l.starts_with("decoder") && l.contains("resid[0..=3]")), "{s}");
    assert!(s.contains("16 tokens per image"), "{s}");

    // No prompt column: the default llava-1.5 prompt around each text; default selectors.
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 3);
    let store = tmp.path().join("store");
    let out = bin()
        .args(["extract", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--out", store.to_str().unwrap(), "--logit-lens", "3", "--batch-size", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = Store::open(&store).unwrap();
    let parts: Vec<String> = s.partitions().unwrap().iter().map(|p| p.to_string()).collect();
    assert!(parts.contains(&"tower=decoder/site=resid/layer=3/selector=mean_image".to_string()), "{parts:?}");
    assert!(parts.contains(&"tower=vision/site=resid/layer=0/selector=cls".to_string()), "{parts:?}");
    let lens = mmprobe_store::store::read_parquet(&store.join("logit_lens.parquet")).unwrap();
    // 3 samples x 4 layers x 3 decoder selectors (last, mean_image, mean_text) x top-3.
    assert_eq!(lens.height(), 3 * 4 * 3 * 3);

    // --logit-lens on a model without a decoder is refused in one line.
    let out = bin().args(extract_args(&data, &tmp.path().join("s2"))).args(["--logit-lens", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--logit-lens needs a decoder tower"));
}

/// A CLIP store whose manifest.json is replaced by another tool's partial one.
fn store_with_partial_manifest(dir: &Path) -> PathBuf {
    let data = dataset(dir, 30);
    let store = dir.join("store");
    let out = bin().args(extract_args(&data, &store)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::write(
        store.join("manifest.json"),
        r#"{"format_version":1,"model":{"family":"clip","path":"x"},"dataset":{"rows":500}}"#,
    )
    .unwrap();
    store
}

#[test]
fn every_analysis_command_takes_another_tools_partial_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_partial_manifest(tmp.path());
    let (s, res) = (store.to_str().unwrap(), tmp.path().join("results"));
    let r = res.to_str().unwrap();
    let report = tmp.path().join("report");
    let runs: [&[&str]; 5] = [
        &["probe", "--store", s, "--concept", "colour", "--sites", "resid", "--repeats", "2", "--out", r],
        &["directions", "--store", s, "--concept", "colour", "--sites", "resid,embeds", "--out", r],
        &["geometry", "--store", s, "--concept", "colour", "--cka-rows", "20", "--folds", "3", "--out", r],
        &["erase", "--store", s, "--concept", "colour", "--sites", "embeds", "--folds", "3", "--out", r],
        &["report", "--store", s, "--results", r, "--out", report.to_str().unwrap()],
    ];
    for args in runs {
        let out = bin().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Token rows (`all`) are probed over samples: n rows, n_groups samples.
    let probes = mmprobe_store::store::read_parquet(&res.join("probes.parquet")).unwrap();
    assert!(probes.column("group_by").is_ok() && probes.column("p_value_holm").is_ok());

    let out = bin().args(["geometry", "--store", s, "--cka-rows", "0", "--out", r]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--cka-rows must be at least 3, got 0") && stderr.trim().lines().count() == 1, "{stderr}");

    // `report --out` naming a file says so, in one line.
    let file = tmp.path().join("a-file");
    fs::write(&file, "x").unwrap();
    let out = bin().args(["report", "--store", s, "--results", r, "--out", file.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a file: the report needs a folder") && stderr.trim().lines().count() == 1, "{stderr}");
}

#[test]
fn layers_minus_one_parses_and_a_zero_batch_is_bad_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 2);
    let store = tmp.path().join("s");
    let mut args = extract_args(&data, &store);
    args.extend(["--layers".into(), "-1".into()]);
    let out = bin().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The last layer of each tower: tiny-a's vision tower has 2, its text tower 3.
    for p in Store::open(&store).unwrap().partitions().unwrap() {
        let last = match (p.site, p.tower) {
            (mmprobe_store::Site::Embeds, _) => 0,
            (_, mmprobe_store::Tower::Vision) => 2,
            _ => 3,
        };
        assert_eq!(p.layer, last, "{p}");
    }

    let mut args = extract_args(&data, &tmp.path().join("z"));
    args.extend(["--batch-size".into(), "0".into()]);
    let out = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--batch-size"), "{err}");
}

#[test]
fn a_write_error_is_one_line_that_does_not_say_read() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 2);
    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    let out = bin().args(extract_args(&data, &file.join("store"))).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("file/store") && !err.contains("cannot read"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "the OS error once: {err}");
}

/// `extract_args` without its `--device cpu` (the launchers add the device).
fn launcher_args(data: &Path, out: &Path) -> Vec<String> {
    let mut a = extract_args(data, out);
    let at = a.iter().position(|s| s == "--device").unwrap();
    a.drain(at..at + 2);
    a.remove(0); // "extract": the launchers name the command
    a
}

#[test]
fn concurrent_processes_from_the_launchers_fill_one_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 11);
    let one = tmp.path().join("one");
    assert!(bin().args(extract_args(&data, &one)).status().unwrap().success());
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts");

    // Three processes at once on this machine's CPU.
    let local = tmp.path().join("local");
    let out = Command::new("bash")
        .arg(scripts.join("launch_local.sh"))
        .arg("3")
        .args(launcher_args(&data, &local))
        .env("MMPROBE", env!("CARGO_BIN_EXE_mmprobe"))
        .env("MMPROBE_DEVICE", "cpu")
        .env("LOG_DIR", tmp.path().join("logs"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("(complete)"), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert_same_store(&one, &local);

    // Two tasks of a Slurm job array, run at once as Slurm would start them.
    let slurm = tmp.path().join("slurm");
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            Command::new("bash")
                .arg(scripts.join("slurm_extract.sbatch"))
                .args(launcher_args(&data, &slurm))
                .env("MMPROBE", env!("CARGO_BIN_EXE_mmprobe"))
                .env("MMPROBE_DEVICE", "cpu")
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .env("SLURM_ARRAY_TASK_COUNT", "2")
                .env("SLURM_CPUS_PER_TASK", "1")
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut t in tasks {
        assert!(t.wait().unwrap().success());
    }
    let shards = Store::open(&slurm).unwrap().manifest.unwrap().shards.unwrap();
    assert_eq!((shards.count, shards.completed.len()), (2, 2), "both tasks recorded");
    assert_same_store(&one, &slurm);
}

#[test]
fn inspect_says_what_an_image_size_becomes() {
    let qwen = fixtures().join("qwen2vl/qwen2-vl");
    let out =
        bin().args(["inspect", "--model", qwen.to_str().unwrap(), "--image-size", "100x60,50x90"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The fixture's processor: 100x60 -> grid [1, 4, 8], 50x90 -> [1, 6, 4] (transformers' image_grid_thw).
    assert!(said.contains("100x60 -> resized to 112x56, 4x8 patches") && said.contains("8 image tokens"), "{said}");
    assert!(said.contains("50x90 -> resized to 56x84, 6x4 patches") && said.contains("6 image tokens"), "{said}");
    let clip = fixtures().join("clip/tiny-a");
    let out = bin().args(["inspect", "--model", clip.to_str().unwrap(), "--image-size", "640x480"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("model's one input size"));
    let bad = bin().args(["inspect", "--model", clip.to_str().unwrap(), "--image-size", "640"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
