use std::path::Path;

use mmprobe_extract::{ModelDir, Site};

/// `--image-size WIDTHxHEIGHT`.
pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(|| format!("'{s}' is not WIDTHxHEIGHT (e.g. 640x480)"))?;
    let n = |v: &str| v.trim().parse::<usize>().ok().filter(|&v| v > 0);
    match (n(w), n(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(format!("'{s}' is not WIDTHxHEIGHT in pixels (e.g. 640x480)")),
    }
}

pub fn run(model: &Path, image_sizes: &[(usize, usize)]) -> anyhow::Result<()> {
    let md = ModelDir::open(model)?;
    let family = mmprobe_extract::family::open(&md)?;
    let info = family.info();
    println!("model     {}", model.display());
    println!("family    {}", info.family);
    println!("{:<8} {:>6} {:>6} {:>6} {:>7}  sites", "tower", "layers", "width", "heads", "tokens");
    for t in &info.towers {
        let sites: Vec<String> = info
            .sites(t.tower)
            .iter()
            .map(|s| {
                let l = s.layers(t.layers);
                if l.start() == l.end() { s.to_string() } else { format!("{s}[{}..={}]", l.start(), l.end()) }
            })
            .collect();
        println!(
            "{:<8} {:>6} {:>6} {:>6} {:>7}  {}",
            t.tower,
            t.layers,
            t.width,
            t.heads,
            t.max_tokens,
            sites.join(" ")
        );
    }
    if let Some(w) = info.embeds_width {
        let with: Vec<&str> = info
            .towers
            .iter()
            .filter(|t| info.sites(t.tower).contains(&Site::Embeds))
            .map(|t| t.tower.as_str())
            .collect();
        let per_token = info.per_token_embeds();
        match with.len() {
            _ if !per_token.is_empty() => println!(
                "embeds    width {w} ({} tower: one row per merged token, what the decoder reads; selectors mean, all)",
                with.join("")
            ),
            2.. => println!("embeds    width {w} (shared image/text space)"),
            _ => println!("embeds    width {w} ({} tower only)", with.join("")),
        }
    }
    for (name, value) in &info.details {
        println!("{name:<9} {value}");
    }
    for &(w, h) in image_sizes {
        match family.image_grid(&md, w, h) {
            Some(grid) => println!("image     {}", grid?),
            None => println!("image     {w}x{h} -> resized to the model's one input size (the vision tokens above)"),
        }
    }
    Ok(())
}
