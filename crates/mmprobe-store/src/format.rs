//! How part files store `emb`: the element type (`--store-dtype f32|f16|bf16`)
//! and the Parquet compression (`--compression zstd|lz4|none`). A store's
//! manifest records both ([`crate::manifest::ExtractionSpec`]); every part file
//! also names its dtype in its key-value metadata ([`DTYPE_KEY`]).

use std::fmt;

use polars::prelude::ParquetCompression;

use crate::names::names;

/// Parquet key-value metadata key naming the [`StoreDType`] a part file was
/// written with (`f32`, `f16` or `bf16`): a bf16 part's column is FLOAT, so the
/// schema alone does not say its values were rounded.
pub const DTYPE_KEY: &str = "mmprobe.store_dtype";

names!(
    /// The precision part files keep `emb` in. Every reader gets floats back with
    /// no user code (pyarrow, polars and DuckDB, checked by
    /// `scripts/check_store_dtypes.py`), and [`crate::part::read_partition`]
    /// returns f32 for all three.
    ///
    /// - `f32`: Parquet FLOAT, the values as given.
    /// - `f16`: Parquet's FLOAT16 logical type (FIXED_LEN_BYTE_ARRAY(2)), written
    ///   from polars' `Float16`: two bytes a value whatever the compression.
    ///   pyarrow reads it as `halffloat`, Python polars as `Float16` (which also
    ///   sums in f16: cast to Float32 before long reductions), DuckDB as `FLOAT`.
    ///   Values round to nearest even; magnitudes from 65520 on would become
    ///   infinite, so the writer refuses them ([`crate::StoreError::F16Range`]);
    ///   below 6.1e-5 precision thins out (subnormals).
    /// - `bf16`: Parquet has no bfloat16 type, and FLOAT16 can't hold bf16's
    ///   range, so the values are rounded to bf16 (nearest even) and stored as
    ///   FLOAT: every reader sees plain f32. zstd removes the 16 zero low bits
    ///   of each value almost entirely, lz4 partly, `none` not at all. polars'
    ///   writer can't be told to use BYTE_STREAM_SPLIT, which would shrink it
    ///   further (pyarrow's: 0.30 to 0.34 of the raw bytes with zstd).
    ///
    /// Measured (bench/README.md, "Store dtypes": 20,000 x 768 rows, N(0, 1) and
    /// ViT-B/32 hidden states), bytes on disk over f32's with the same
    /// compression, zstd / lz4 / none: f16 0.50 / 0.50 / 0.50, bf16 0.48-0.49 /
    /// 0.63-0.64 / 1.00. With zstd, the default, bf16 is as small as f16 and
    /// reads as f32 everywhere; f16 halves the bytes under any compression.
    /// Writes on one thread: 120 to 320 MB/s of f32 rows; bf16 + zstd is the
    /// slowest (zstd works harder on compressible pages), about 0.55x f32 + zstd.
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    StoreDType, "store dtype", { #[default] F32 => "f32", F16 => "f16", Bf16 => "bf16" }
);

names!(
    /// Parquet page compression of part files. zstd (level 3, polars' default)
    /// is the default; lz4 (LZ4_RAW) writes faster; none writes fastest and the
    /// most bytes.
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    Compression, "compression", { #[default] Zstd => "zstd", Lz4 => "lz4", None => "none" }
);

impl Compression {
    pub(crate) fn parquet(self) -> ParquetCompression {
        match self {
            Compression::Zstd => ParquetCompression::Zstd(None),
            Compression::Lz4 => ParquetCompression::Lz4Raw,
            Compression::None => ParquetCompression::Uncompressed,
        }
    }
}

impl StoreDType {
    /// `x` rounded to bfloat16 (nearest, ties to even), as the f32 a bf16
    /// part stores.
    pub(crate) fn round_bf16(x: f32) -> f32 {
        let bits = x.to_bits();
        if x.is_nan() {
            // Keep it a NaN: truncation could leave only zero mantissa bits (an infinity).
            return f32::from_bits((bits & 0xffff_0000) | 0x0040_0000);
        }
        // Round to nearest, ties to even, on the 16 bits dropped.
        let lsb = (bits >> 16) & 1;
        f32::from_bits(bits.wrapping_add(0x7fff + lsb) & 0xffff_0000)
    }
}

/// How a part file stores its rows: [`PartFormat::default`] is f32 + zstd, the
/// format of every store written before these options existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PartFormat {
    pub dtype: StoreDType,
    pub compression: Compression,
}

impl PartFormat {
    pub fn new(dtype: StoreDType, compression: Compression) -> Self {
        PartFormat { dtype, compression }
    }
}

impl fmt::Display for PartFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.dtype, self.compression)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_print_and_serialise_alike() {
        for d in StoreDType::ALL {
            assert_eq!(d.to_string().parse::<StoreDType>().unwrap(), *d);
            assert_eq!(serde_json::to_string(d).unwrap(), format!("\"{d}\""));
        }
        for c in Compression::ALL {
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), *c);
            assert_eq!(serde_json::to_string(c).unwrap(), format!("\"{c}\""));
        }
        assert_eq!(PartFormat::default(), PartFormat::new(StoreDType::F32, Compression::Zstd));
        assert_eq!(PartFormat::new(StoreDType::Bf16, Compression::Lz4).to_string(), "bf16 lz4");
    }

    #[test]
    fn bad_names_are_refused_naming_the_accepted_ones() {
        let e = "fp16".parse::<StoreDType>().unwrap_err().to_string();
        assert_eq!(e, "unknown store dtype 'fp16' (expected one of: f32, f16, bf16)");
        let e = "gzip".parse::<Compression>().unwrap_err().to_string();
        assert_eq!(e, "unknown compression 'gzip' (expected one of: zstd, lz4, none)");
        assert!(serde_json::from_str::<StoreDType>("\"F16\"").is_err());
    }

    #[test]
    fn bf16_rounding_by_bits() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(StoreDType::round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(StoreDType::round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(StoreDType::round_bf16(-3.0), -3.0);
        assert!(StoreDType::round_bf16(f32::NAN).is_nan());
        assert_eq!(StoreDType::round_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(StoreDType::round_bf16(1e-40).to_bits() & 0xffff, 0);
    }
}
