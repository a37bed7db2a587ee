use std::path::Path;

use mmprobe_extract::{ModelInfo, Site};

pub fn run(model: &Path) -> anyhow::Result<()> {
    let info = ModelInfo::from_dir(model)?;
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
        match with.len() {
            2.. => println!("embeds    width {w} (shared image/text space)"),
            _ => println!("embeds    width {w} ({} tower only)", with.join("")),
        }
    }
    for (name, value) in &info.details {
        println!("{name:<9} {value}");
    }
    Ok(())
}
