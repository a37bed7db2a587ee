//! Turning `--towers/--sites/--layers/--select` into the exact partitions a
//! run writes, validated against the model before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use mmprobe_store::manifest::ExtractionSpec;
use mmprobe_store::{Partition, Selector, Site, Tower};

use crate::describe::{ModelInfo, selector_fits};
use crate::error::{ExtractError, Result};

/// `--layers`: every layer, or indices where negatives count from the end (-1 = last).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LayerSpec {
    #[default]
    All,
    Indices(Vec<i64>),
}

impl FromStr for LayerSpec {
    type Err = ExtractError;
    fn from_str(s: &str) -> Result<Self> {
        if s.trim() == "all" {
            return Ok(LayerSpec::All);
        }
        s.split(',')
            .map(|x| {
                x.trim()
                    .parse::<i64>()
                    .map_err(|_| ExtractError::Input(format!("--layers: '{x}' is not a layer index")))
            })
            .collect::<Result<Vec<_>>>()
            .map(LayerSpec::Indices)
    }
}

impl LayerSpec {
    /// The layers of `site` in an `n`-layer tower (resid 0..=n, so -1 = n).
    /// An index outside the tower is an error naming its count; an index in
    /// the tower that a site lacks (attn and mlp have no layer 0) is left out.
    pub fn resolve(&self, site: Site, n: usize, tower: Tower) -> Result<Vec<usize>> {
        if site == Site::Embeds {
            return Ok(vec![0]);
        }
        let range = site.layers(n);
        let mut out: Vec<usize> = match self {
            LayerSpec::All => range.collect(),
            LayerSpec::Indices(ix) => {
                let mut v = Vec::with_capacity(ix.len());
                for &i in ix {
                    let l = if i < 0 { n as i64 + 1 + i } else { i };
                    if l < 0 || l > n as i64 {
                        return Err(ExtractError::Input(format!(
                            "--layers: the {tower} tower has {n} layers (0..={n}, 0 being the embeddings, \
                             or -{}..=-1 from the last), so {i} is none of them",
                            n + 1
                        )));
                    }
                    if range.contains(&(l as usize)) {
                        v.push(l as usize);
                    }
                }
                v
            }
        };
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// What one run extracts: per tower, per site, the layers; and the selectors.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractionPlan {
    pub sites: BTreeMap<Tower, BTreeMap<Site, Vec<usize>>>,
    pub selectors: Vec<Selector>,
    /// Towers whose `embeds` are one row per token ([`ModelInfo::per_token_embeds`]).
    pub per_token_embeds: BTreeSet<Tower>,
}

impl ExtractionPlan {
    pub fn new(
        info: &ModelInfo,
        towers: Option<&[Tower]>,
        sites: &[Site],
        layers: &LayerSpec,
        selectors: &[Selector],
    ) -> Result<Self> {
        let available: Vec<Tower> = info.towers.iter().map(|t| t.tower).collect();
        let towers = towers.map(<[Tower]>::to_vec).unwrap_or_else(|| available.clone());
        let names = |v: &[Tower]| v.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ");
        let mut plan = BTreeMap::new();
        for &tower in &towers {
            let Some(t) = info.tower(tower) else {
                return Err(ExtractError::Input(format!(
                    "--towers: this {} model has no {tower} tower (it has: {})",
                    info.family,
                    names(&available)
                )));
            };
            let offered = info.sites(tower);
            let mut per_site = BTreeMap::new();
            for &site in sites {
                if !offered.contains(&site) {
                    continue;
                }
                let l = layers.resolve(site, t.layers, tower)?;
                if !l.is_empty() {
                    per_site.insert(site, l);
                }
            }
            if per_site.is_empty() {
                return Err(ExtractError::Input(format!(
                    "no requested site and layer exists in the {tower} tower ({} layers; sites {})",
                    t.layers,
                    offered.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
            plan.insert(tower, per_site);
        }
        let per_token_embeds: BTreeSet<Tower> = info
            .per_token_embeds()
            .into_iter()
            .filter(|t| plan.get(t).is_some_and(|s| s.contains_key(&Site::Embeds)))
            .collect();
        for &sel in selectors {
            let fits = plan.iter().any(|(t, s)| s.keys().any(|site| info.fits(sel, *t, *site)));
            if !fits {
                let hint = match per_token_embeds.first() {
                    Some(t) if sel == Selector::Pooled => {
                        format!(" (this model's {t} embeds are one row per token: `mean` or `all` select them)")
                    }
                    _ => String::new(),
                };
                return Err(ExtractError::Input(format!(
                    "--select: '{sel}' fits none of the requested towers and sites{hint}"
                )));
            }
        }
        Ok(ExtractionPlan { sites: plan, selectors: selectors.to_vec(), per_token_embeds })
    }

    pub fn towers(&self) -> impl Iterator<Item = Tower> + '_ {
        self.sites.keys().copied()
    }

    /// Every partition the run writes.
    pub fn partitions(&self) -> Vec<Partition> {
        let mut out = Vec::new();
        for (&tower, sites) in &self.sites {
            for (&site, layers) in sites {
                for &layer in layers {
                    for &selector in &self.selectors {
                        if self.fits(selector, tower, site) {
                            out.push(Partition { tower, site, layer, selector });
                        }
                    }
                }
            }
        }
        out
    }

    pub fn wants(&self, tower: Tower, selector: Selector) -> bool {
        self.sites.get(&tower).is_some_and(|s| s.keys().any(|site| self.fits(selector, tower, *site)))
            && self.selectors.contains(&selector)
    }

    /// Whether `selector` gives rows of `site` in `tower` (the names alone,
    /// and whether that tower's embeds are tokens).
    fn fits(&self, selector: Selector, tower: Tower, site: Site) -> bool {
        selector_fits(selector, tower, site, self.per_token_embeds.contains(&tower))
    }

    /// The manifest's record of this plan.
    pub fn spec(&self, chunk_size: usize) -> ExtractionSpec {
        ExtractionSpec {
            sites: self
                .sites
                .iter()
                .map(|(t, s)| (t.to_string(), s.iter().map(|(site, l)| (site.to_string(), l.clone())).collect()))
                .collect(),
            selectors: self.selectors.iter().map(|s| s.to_string()).collect(),
            per_token_embeds: self.per_token_embeds.iter().map(|t| t.to_string()).collect(),
            chunk_size,
            ..Default::default()
        }
    }

    /// The plan a manifest records, if its names parse.
    pub fn from_spec(spec: &ExtractionSpec) -> Option<Self> {
        let mut sites = BTreeMap::new();
        for (tower, per_site) in &spec.sites {
            let mut m = BTreeMap::new();
            for (site, layers) in per_site {
                m.insert(site.parse::<Site>().ok()?, layers.clone());
            }
            sites.insert(tower.parse::<Tower>().ok()?, m);
        }
        let selectors = spec.selectors.iter().map(|s| s.parse::<Selector>().ok()).collect::<Option<Vec<_>>>()?;
        let per_token_embeds =
            spec.per_token_embeds.iter().map(|t| t.parse::<Tower>().ok()).collect::<Option<BTreeSet<_>>>()?;
        Some(ExtractionPlan { sites, selectors, per_token_embeds })
    }

    /// Both plans' towers, sites, layers and selectors: the smallest plan
    /// whose partitions hold both plans' partitions.
    pub fn union(&self, other: &ExtractionPlan) -> ExtractionPlan {
        let mut sites = self.sites.clone();
        for (tower, per_site) in &other.sites {
            let mine = sites.entry(*tower).or_default();
            for (site, layers) in per_site {
                let l = mine.entry(*site).or_default();
                l.extend(layers);
                l.sort_unstable();
                l.dedup();
            }
        }
        let mut selectors = self.selectors.clone();
        selectors.extend(other.selectors.iter().filter(|s| !self.selectors.contains(s)));
        let per_token_embeds = self.per_token_embeds.union(&other.per_token_embeds).copied().collect();
        ExtractionPlan { sites, selectors, per_token_embeds }
    }
}
