//! The shapes dataset: deterministic, and every recorded factor is what the image shows.

use mmprobe_zoo::shapes::{COLOURS, SHAPES};
use mmprobe_zoo::{ShapesParams, generate_shapes};

fn rows(csv: &str) -> Vec<Vec<String>> {
    // Fields here never hold commas except the questions, which are quoted.
    csv.lines()
        .skip(1)
        .map(|l| {
            let mut out = Vec::new();
            let mut cur = String::new();
            let mut quoted = false;
            for ch in l.chars() {
                match ch {
                    '"' => quoted = !quoted,
                    ',' if !quoted => out.push(std::mem::take(&mut cur)),
                    c => cur.push(c),
                }
            }
            out.push(cur);
            out
        })
        .collect()
}

#[test]
fn generation_is_deterministic_and_labels_match_pixels() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = ShapesParams { n: 60, seed: 3, size: 64 };
    let ma = generate_shapes(a.path(), &p).unwrap();
    let mb = generate_shapes(b.path(), &p).unwrap();
    let (ca, cb) = (std::fs::read_to_string(&ma).unwrap(), std::fs::read_to_string(&mb).unwrap());
    assert_eq!(ca, cb);
    for i in [0, 17, 59] {
        let f = format!("images/{i:05}.png");
        assert_eq!(std::fs::read(a.path().join(&f)).unwrap(), std::fs::read(b.path().join(&f)).unwrap(), "{f}");
    }
    let other = tempfile::tempdir().unwrap();
    generate_shapes(other.path(), &ShapesParams { seed: 4, ..p.clone() }).unwrap();
    assert_ne!(std::fs::read(other.path().join("data.csv")).unwrap(), ca.as_bytes(), "the seed matters");

    let header: Vec<&str> = ca.lines().next().unwrap().split(',').collect();
    assert_eq!(
        &header[..10],
        ["id", "image", "text", "colour", "shape", "size", "position", "row", "col", "background"]
    );
    let rows = rows(&ca);
    assert_eq!(rows.len(), 60);
    let mut shapes_seen = std::collections::BTreeSet::new();
    for r in &rows {
        let img = image::open(a.path().join(&r[1])).unwrap().to_rgb8();
        let rgb = COLOURS.iter().find(|c| c.0 == r[3]).unwrap().1;
        let hits: Vec<(u32, u32)> =
            img.enumerate_pixels().filter(|(_, _, p)| p.0 == rgb).map(|(x, y, _)| (x, y)).collect();
        assert!(hits.len() > 20, "{}: {} pixels of {}", r[0], hits.len(), r[3]);
        let cx = hits.iter().map(|h| h.0 as f64).sum::<f64>() / hits.len() as f64;
        let cy = hits.iter().map(|h| h.1 as f64).sum::<f64>() / hits.len() as f64;
        let col = ["left", "centre", "right"].iter().position(|c| *c == r[8]).unwrap();
        let row = ["top", "middle", "bottom"].iter().position(|c| *c == r[7]).unwrap();
        assert_eq!(((cx / 64.0 * 3.0) as usize, (cy / 64.0 * 3.0) as usize), (col, row), "{}: centroid", r[0]);
        assert!(r[2].contains(&r[3]) && r[2].contains(&r[4]) && r[2].contains(&r[5]), "caption {}", r[2]);
        assert!(!r[2].contains(&r[9]), "the background is never named");
        assert_eq!(r[11], r[3]);
        assert_eq!(
            r[header.len() - 1],
            "USER: <image> Describe the picture. ASSISTANT:",
            "the decoder prompt names no concept"
        );
        shapes_seen.insert(r[4].clone());
    }
    assert_eq!(shapes_seen.len(), SHAPES.len());
    assert!(generate_shapes(a.path(), &ShapesParams { n: 0, ..p }).is_err());
}
