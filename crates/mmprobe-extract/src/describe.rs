//! What a checkpoint folder holds, from its config alone: what `mmprobe
//! inspect` prints and what extraction validates its flags against.

use std::path::Path;

use mmprobe_store::{Selector, Site, Tower};

use crate::error::Result;
use crate::family::ModelDir;

/// One tower: its layer count and width, and the sites it offers.
#[derive(Debug, Clone, PartialEq)]
pub struct TowerInfo {
    pub tower: Tower,
    pub layers: usize,
    pub width: i64,
    pub heads: i64,
    /// Tokens per input (vision: patches, plus CLS where it has one; text: the position limit).
    pub max_tokens: i64,
    /// Whether position 0 is a CLS token (what `cls` selects): CLIP's vision tower, not SigLIP's.
    pub cls: bool,
    /// Whether the tower has an `embeds` site (a SigLIP vision tower without its head has none).
    pub embeds: bool,
    /// Whether its embeds are one row per token (Qwen2-VL's merger output,
    /// one per merged token) rather than one pooled vector per input: then
    /// `mean` and `all` select them, not `pooled`.
    pub embeds_per_token: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The family's name, as the manifest records it.
    pub family: &'static str,
    pub towers: Vec<TowerInfo>,
    /// Width of the shared `embeds` space, when the family has one.
    pub embeds_width: Option<i64>,
    /// Family-specific facts worth printing (name, value).
    pub details: Vec<(String, String)>,
    /// What a run extracts when no selector is given.
    pub default_selectors: Vec<Selector>,
}

impl ModelInfo {
    /// What a checkpoint folder holds, from its config.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Ok(crate::family::open(&ModelDir::open(dir)?)?.info().clone())
    }

    pub fn tower(&self, tower: Tower) -> Option<&TowerInfo> {
        self.towers.iter().find(|t| t.tower == tower)
    }

    /// The sites a tower offers in this family.
    pub fn sites(&self, tower: Tower) -> Vec<Site> {
        let mut sites = vec![Site::Resid, Site::Attn, Site::Mlp];
        if self.embeds_width.is_some() && self.tower(tower).is_some_and(|t| t.embeds) {
            sites.push(Site::Embeds);
        }
        sites
    }

    /// Whether `selector` applies to `site` of `tower` in this model: the
    /// tower offers the site, the selector fits that kind of tower and site
    /// ([`selector_fits`]), and `cls` only where position 0 is a CLS token.
    pub fn fits(&self, selector: Selector, tower: Tower, site: Site) -> bool {
        let Some(t) = self.tower(tower) else { return false };
        selector_fits(selector, tower, site, t.embeds_per_token)
            && self.sites(tower).contains(&site)
            && (selector != Selector::Cls || t.cls)
    }

    /// The towers whose embeds are one row per token.
    pub fn per_token_embeds(&self) -> Vec<Tower> {
        self.towers.iter().filter(|t| t.embeds && t.embeds_per_token).map(|t| t.tower).collect()
    }

    /// The width of a site's vectors in a tower.
    pub fn width(&self, tower: Tower, site: Site) -> Option<i64> {
        match site {
            Site::Embeds => self.embeds_width,
            _ => self.tower(tower).map(|t| t.width),
        }
    }
}

/// Whether `selector` applies to `site` of `tower`: [`Selector::fits`], except
/// that embeds made of tokens (`per_token_embeds`) take `mean` and `all`
/// instead of `pooled`.
pub fn selector_fits(selector: Selector, tower: Tower, site: Site, per_token_embeds: bool) -> bool {
    match site {
        Site::Embeds if per_token_embeds => matches!(selector, Selector::Mean | Selector::All),
        _ => selector.fits(tower, site),
    }
}
