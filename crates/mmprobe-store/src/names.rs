//! The fixed names for towers, sites and selectors. They are the
//! store's partition values, so their spelling is part of the format.

#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} '{value}' (expected one of: {expected})")]
pub struct NameError {
    pub kind: &'static str,
    pub value: String,
    pub expected: String,
}

/// A closed set of names as an enum: `as_str`, `ALL`, `Display`, and a
/// `FromStr` whose error ([`NameError`]) lists the names. Used for the
/// store's own names and by other crates for their fixed choices.
#[macro_export]
macro_rules! names {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, { $($(#[$vmeta:meta])* $variant:ident => $name:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $ty { $($(#[$vmeta])* $variant),+ }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result { f.pad(self.as_str()) }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::NameError;
            fn from_str(s: &str) -> ::std::result::Result<Self, $crate::NameError> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err($crate::NameError {
                        kind: $kind,
                        value: s.to_string(),
                        expected: [$($name),+].join(", "),
                    }),
                }
            }
        }
    };
}

pub use names;

names!(
    /// A model part with its own hidden states.
    Tower, "tower", { Vision => "vision", Text => "text", Decoder => "decoder" }
);

names!(
    /// Where in a layer a hidden state is read.
    Site, "site", {
        Resid => "resid",
        Attn => "attn",
        Mlp => "mlp",
        Embeds => "embeds",
    }
);

names!(
    /// How a sequence of hidden states becomes rows.
    Selector, "selector", {
        Cls => "cls",
        Eos => "eos",
        Last => "last",
        Mean => "mean",
        MeanImage => "mean_image",
        MeanText => "mean_text",
        Pooled => "pooled",
        All => "all",
    }
);

impl Site {
    /// The layers a site exists at in a tower of `n` layers:
    /// resid 0..=N (0 = embedding output), attn and mlp 1..=N, embeds 0.
    pub fn layers(self, n: usize) -> std::ops::RangeInclusive<usize> {
        match self {
            Site::Resid => 0..=n,
            Site::Attn | Site::Mlp => 1..=n,
            Site::Embeds => 0..=0,
        }
    }
}

impl Selector {
    /// Whether the selector applies to this tower and site.
    pub fn fits(self, tower: Tower, site: Site) -> bool {
        match (self, site) {
            (Selector::Pooled, s) => s == Site::Embeds,
            (_, Site::Embeds) => false,
            (Selector::Cls, _) => tower == Tower::Vision,
            (Selector::Eos, _) => tower == Tower::Text,
            (Selector::Last, _) => tower != Tower::Vision,
            (Selector::MeanImage | Selector::MeanText, _) => tower == Tower::Decoder,
            (Selector::Mean | Selector::All, _) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Selector::ALL {
            assert_eq!(s.as_str().parse::<Selector>().unwrap(), *s);
        }
        let err = "cls_token".parse::<Selector>().unwrap_err().to_string();
        assert!(err.contains("unknown selector 'cls_token'") && err.contains("mean_image"), "{err}");
    }

    #[test]
    fn selectors_fit_where_design_says() {
        assert!(Selector::Cls.fits(Tower::Vision, Site::Resid));
        assert!(!Selector::Cls.fits(Tower::Text, Site::Resid));
        assert!(Selector::Eos.fits(Tower::Text, Site::Mlp));
        assert!(Selector::Pooled.fits(Tower::Text, Site::Embeds));
        assert!(!Selector::Mean.fits(Tower::Vision, Site::Embeds));
        assert!(Selector::MeanImage.fits(Tower::Decoder, Site::Resid));
        assert_eq!(Site::Attn.layers(12), 1..=12);
    }
}
