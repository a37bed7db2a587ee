//! What an intervention run is asked to do, checked before any model loads.

use std::str::FromStr;

use mmprobe_extract::LayerSpec;
use mmprobe_store::{Selector, Tower, names};

use crate::error::{InterveneError, Result};

names!(
    /// Remove the concept (project out / LEACE) or push along its direction.
    Method, "method", { Erase => "erase", Steer => "steer" }
);

names!(
    /// How the edit is fitted on the store's rows.
    DirectionMethod, "direction", { DiffMeans => "diff-means", Lda => "lda", Probe => "probe", Leace => "leace" }
);

names!(
    /// Which positions of the sequence the edit touches.
    Positions, "positions", { All => "all", Image => "image", Text => "text", Last => "last", Cls => "cls" }
);

impl Positions {
    /// The store rows an edit at these positions is fitted on: the selector
    /// that pools the same positions.
    pub fn fit_selector(self, tower: Tower) -> Selector {
        match (self, tower) {
            (Positions::Cls, _) => Selector::Cls,
            (Positions::Image, Tower::Decoder) => Selector::MeanImage,
            (Positions::Text, Tower::Decoder) => Selector::MeanText,
            (Positions::Last, _) => Selector::Last,
            _ => Selector::Mean,
        }
    }

    /// Whether a tower has these positions: cls on a vision tower, image,
    /// text and last in a decoder's mixed sequence, all everywhere.
    pub fn fits(self, tower: Tower) -> bool {
        match self {
            Positions::All => true,
            Positions::Cls => tower == Tower::Vision,
            Positions::Image | Positions::Text | Positions::Last => tower == Tower::Decoder,
        }
    }
}

/// `--at TOWER/SITE/LAYERS`, e.g. `vision/resid/3,4` or `decoder/resid/all`.
#[derive(Debug, Clone, PartialEq)]
pub struct At {
    pub tower: Tower,
    pub layers: LayerSpec,
}

impl FromStr for At {
    type Err = InterveneError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |m: String| InterveneError::Params(format!("--at '{s}': {m}"));
        let parts: Vec<&str> = s.split('/').collect();
        let [tower, site, layers] = parts[..] else {
            return Err(bad("expected TOWER/SITE/LAYERS, e.g. vision/resid/-1".into()));
        };
        let tower: Tower = tower.parse().map_err(|e: mmprobe_store::NameError| bad(e.to_string()))?;
        if site != "resid" {
            return Err(bad(format!("interventions act on the residual stream (resid), not '{site}'")));
        }
        let layers = layers.parse().map_err(|e: mmprobe_extract::ExtractError| bad(e.to_string()))?;
        Ok(At { tower, layers })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InterveneParams {
    pub concept: String,
    pub at: At,
    pub positions: Positions,
    pub method: Method,
    pub direction: DirectionMethod,
    /// Steering strengths in residual units; default: 0.5, 1, 2 and 4 times
    /// the distance between the target's mean and the others' along the direction.
    pub alphas: Option<Vec<f64>>,
    /// The class to steer toward.
    pub target: Option<String>,
    /// Share of the dataset's samples the edit is fitted on; the rest are measured.
    pub fit_share: f64,
    /// At most this many held-out samples are measured.
    pub max_samples: usize,
    pub bootstrap: usize,
    pub seed: u64,
    pub batch_size: usize,
    /// Zero-shot captions, `{}` filled with each class, instead of each sample's own caption with its class swapped.
    pub template: Option<String>,
    /// Folds of the downstream (amnesic) probe.
    pub probe_folds: usize,
}

impl Default for InterveneParams {
    fn default() -> Self {
        InterveneParams {
            concept: String::new(),
            at: At { tower: Tower::Vision, layers: LayerSpec::Indices(vec![-1]) },
            positions: Positions::All,
            method: Method::Erase,
            direction: DirectionMethod::Leace,
            alphas: None,
            target: None,
            fit_share: 0.5,
            max_samples: 1000,
            bootstrap: 1000,
            seed: 0,
            batch_size: 32,
            template: None,
            probe_folds: 5,
        }
    }
}

/// Parameters that passed [`InterveneParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedIntervene(InterveneParams);

impl CheckedIntervene {
    pub fn params(&self) -> &InterveneParams {
        &self.0
    }
}

impl InterveneParams {
    pub fn check(self) -> Result<CheckedIntervene> {
        let bad = |m: String| Err(InterveneError::Params(m));
        if self.concept.trim().is_empty() {
            return bad("--concept is empty".into());
        }
        if !self.positions.fits(self.at.tower) {
            return bad(format!("positions '{}' do not exist in the {} tower", self.positions, self.at.tower));
        }
        match self.method {
            Method::Erase => {
                if self.target.is_some() || self.alphas.is_some() {
                    return bad("--target and --alpha are for --method steer; erasure has neither".into());
                }
            }
            Method::Steer => {
                if self.target.is_none() {
                    return bad("--method steer needs --target CLASS (the class to steer toward)".into());
                }
                if self.direction == DirectionMethod::Leace {
                    return bad(
                        "steering adds a direction: use --direction diff-means, lda or probe (LEACE is an eraser)"
                            .into(),
                    );
                }
                if let Some(a) = &self.alphas {
                    if a.is_empty() {
                        return bad("--alpha lists no value".into());
                    }
                    if let Some(x) = a.iter().find(|x| !x.is_finite()) {
                        return bad(format!("--alpha {x} is not a finite number"));
                    }
                }
            }
        }
        if !(self.fit_share > 0.0 && self.fit_share < 1.0) {
            return bad(format!("--fit-share {} must be strictly between 0 and 1", self.fit_share));
        }
        if self.max_samples < 10 {
            return bad(format!("--max-samples {} is below 10", self.max_samples));
        }
        if self.bootstrap < 100 {
            return bad(format!("--bootstrap {} is below 100 resamples", self.bootstrap));
        }
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if self.probe_folds < 2 {
            return bad(format!("--probe-folds {} is below 2", self.probe_folds));
        }
        if let Some(t) = &self.template
            && t.matches("{}").count() != 1
        {
            return bad(format!("--template '{t}' must hold exactly one {{}} for the class name"));
        }
        Ok(CheckedIntervene(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_are_refused_before_anything_loads() {
        let ok = InterveneParams { concept: "colour".into(), ..Default::default() };
        assert!(ok.clone().check().is_ok());
        let steer = InterveneParams {
            method: Method::Steer,
            direction: DirectionMethod::DiffMeans,
            target: Some("red".into()),
            ..ok.clone()
        };
        assert!(steer.clone().check().is_ok());
        for direction in [DirectionMethod::Lda, DirectionMethod::Probe] {
            assert!(InterveneParams { direction, ..steer.clone() }.check().is_ok());
            assert!(InterveneParams { direction, ..ok.clone() }.check().is_ok());
        }
        for p in [
            InterveneParams { concept: " ".into(), ..ok.clone() },
            InterveneParams { positions: Positions::Image, ..ok.clone() },
            InterveneParams { target: Some("red".into()), ..ok.clone() },
            InterveneParams { target: None, ..steer.clone() },
            InterveneParams { direction: DirectionMethod::Leace, ..steer.clone() },
            InterveneParams { alphas: Some(vec![]), ..steer.clone() },
            InterveneParams { alphas: Some(vec![f64::NAN]), ..steer.clone() },
            InterveneParams { fit_share: 1.0, ..ok.clone() },
            InterveneParams { bootstrap: 10, ..ok.clone() },
            InterveneParams { template: Some("a photo".into()), ..ok.clone() },
        ] {
            assert!(p.clone().check().is_err(), "{p:?} was accepted");
        }
    }

    #[test]
    fn at_names_tower_site_and_layers() {
        let at: At = "decoder/resid/1,-2".parse().unwrap();
        assert_eq!((at.tower, at.layers), (Tower::Decoder, LayerSpec::Indices(vec![1, -2])));
        for bad in ["vision/attn/1", "vision/1", "eye/resid/1", "vision/resid/x"] {
            assert!(bad.parse::<At>().is_err(), "{bad}");
        }
    }
}
