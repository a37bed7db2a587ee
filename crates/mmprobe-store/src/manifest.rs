//! `manifest.json`: where a store's activations came from. Every field is
//! optional when reading, so stores written by other tools (even
//! `{"format_version": 1}`) open; missing provenance reads as unknown.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, io};
use crate::format::{Compression, PartFormat, StoreDType};
use crate::layout::{MANIFEST, read_json, write_atomic};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub format_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmprobe_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelProvenance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetProvenance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extraction: Option<ExtractionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardsDone>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelProvenance {
    pub path: String,
    pub family: String,
    pub config_sha256: String,
    /// file name -> sha256
    pub weights: BTreeMap<String, String>,
    pub dtype: String,
    pub device: String,
    /// f32 was let run in TF32 on CUDA (`--allow-tf32`); false when absent.
    #[serde(default)]
    pub allow_tf32: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasetProvenance {
    pub path: String,
    /// sha256 of the manifest file, or of an image folder's listing (paths and sizes).
    pub sha256: String,
    pub rows: usize,
}

/// What was asked for. A resumed or sharded run must ask for the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtractionSpec {
    /// tower -> site -> layers
    pub sites: BTreeMap<String, BTreeMap<String, Vec<usize>>>,
    pub selectors: Vec<String>,
    /// Towers whose `embeds` are one row per token (`mean`/`all` rows, not
    /// `pooled`): Qwen2-VL's vision merger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_token_embeds: Vec<String>,
    /// Samples per chunk: the unit of atomic progress and of part files.
    pub chunk_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_lens: Option<usize>,
    /// The precision of `emb` in part files; f32 in stores made before the option.
    pub store_dtype: StoreDType,
    /// The compression of part files; zstd in stores made before the option.
    pub compression: Compression,
}

impl ExtractionSpec {
    /// The format this store's part files are written in.
    pub fn part_format(&self) -> PartFormat {
        PartFormat::new(self.store_dtype, self.compression)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShardsDone {
    pub count: usize,
    pub completed: Vec<usize>,
}

impl Manifest {
    /// Reads `root/manifest.json`; `Ok(None)` when there is none.
    pub fn read(root: &Path) -> Result<Option<Manifest>> {
        read_json(&root.join(MANIFEST))
    }

    pub fn write(&self, root: &Path) -> Result<()> {
        let path = root.join(MANIFEST);
        let json = serde_json::to_vec_pretty(self).expect("manifest serialises");
        write_atomic(&path, |f| std::io::Write::write_all(f, &json).map_err(io(&path)))
    }

    /// The provenance fields that must agree before a run may add to a store.
    pub fn same_origin(&self, other: &Manifest) -> std::result::Result<(), String> {
        let (Some(a), Some(b)) = (&self.model, &other.model) else { return Err("no model recorded".into()) };
        if a.config_sha256 != b.config_sha256 || a.weights != b.weights {
            return Err(format!("it was extracted from another model ({})", a.path));
        }
        if a.dtype != b.dtype {
            return Err(format!("it was extracted in {}, not {}", a.dtype, b.dtype));
        }
        match (&self.dataset, &other.dataset) {
            (Some(x), Some(y)) if x.sha256 == y.sha256 && x.rows == y.rows => {}
            (Some(x), Some(y)) if x.path == y.path => {
                let short = |s: &str| s.chars().take(12).collect::<String>();
                return Err(format!(
                    "its dataset {} has changed since (sha256 {} then, {} now; {} rows then, {} now)",
                    x.path,
                    short(&x.sha256),
                    short(&y.sha256),
                    x.rows,
                    y.rows
                ));
            }
            (Some(x), _) => return Err(format!("it was extracted from another dataset ({})", x.path)),
            _ => return Err("no dataset recorded".into()),
        }
        match (&self.extraction, &other.extraction) {
            (Some(a), Some(b)) if a.chunk_size != b.chunk_size => {
                Err(format!("it was made with --chunk-size {}, not {}", a.chunk_size, b.chunk_size))
            }
            (Some(a), Some(b)) if a.logit_lens != b.logit_lens => {
                let k = |l: Option<usize>| l.map_or("no --logit-lens".to_string(), |k| format!("--logit-lens {k}"));
                Err(format!("it was made with {}, not {}", k(a.logit_lens), k(b.logit_lens)))
            }
            (Some(a), Some(b)) if a.store_dtype != b.store_dtype => {
                Err(format!("it was made with --store-dtype {}, not {}", a.store_dtype, b.store_dtype))
            }
            (Some(a), Some(b)) if a.compression != b.compression => {
                Err(format!("it was made with --compression {}, not {}", a.compression, b.compression))
            }
            (Some(a), Some(b)) if a != b => Err(format!("it holds another plan ({})", plan_difference(a, b))),
            (a, b) if a != b => Err("it holds other towers, sites, layers or selectors".into()),
            _ => Ok(()),
        }
    }
}

/// How plan `new` differs from the store's `old`, as "it has X, not Y" clauses.
fn plan_difference(old: &ExtractionSpec, new: &ExtractionSpec) -> String {
    let list = |v: &mut dyn Iterator<Item = String>| {
        let v: Vec<String> = v.collect();
        if v.is_empty() { "none".to_string() } else { v.join(", ") }
    };
    let mut out = Vec::new();
    let towers = |s: &ExtractionSpec| list(&mut s.sites.keys().cloned());
    if old.sites.keys().ne(new.sites.keys()) {
        out.push(format!("towers {}, not {}", towers(old), towers(new)));
    }
    for (tower, sites) in old.sites.iter().filter(|(t, _)| new.sites.contains_key(*t)) {
        let other = &new.sites[tower];
        if sites.keys().ne(other.keys()) {
            out.push(format!(
                "{tower} sites {}, not {}",
                list(&mut sites.keys().cloned()),
                list(&mut other.keys().cloned())
            ));
        }
        for (site, layers) in sites.iter().filter(|(s, _)| other.contains_key(*s)) {
            if layers != &other[site] {
                let l = |v: &[usize]| list(&mut v.iter().map(|x| x.to_string()));
                out.push(format!("{tower} {site} layers {}, not {}", l(layers), l(&other[site])));
            }
        }
    }
    if old.selectors != new.selectors {
        out.push(format!(
            "selectors {}, not {}",
            list(&mut old.selectors.iter().cloned()),
            list(&mut new.selectors.iter().cloned())
        ));
    }
    out.join("; ")
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Now as RFC 3339 UTC, without a date-time dependency.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_manifest_reads() {
        let m: Manifest = serde_json::from_str(r#"{"format_version": 1}"#).unwrap();
        assert_eq!(m.format_version, 1);
        assert!(m.model.is_none() && m.dataset.is_none());
    }

    #[test]
    fn partial_manifest_of_another_tool_reads() {
        let m: Manifest = serde_json::from_str(
            r#"{"format_version":1,"model":{"family":"clip","path":"x"},"dataset":{"rows":500},"shards":{}}"#,
        )
        .unwrap();
        let model = m.model.unwrap();
        assert_eq!((model.family.as_str(), model.path.as_str(), model.config_sha256.as_str()), ("clip", "x", ""));
        assert_eq!(m.dataset.unwrap().rows, 500);
    }

    fn full(spec: ExtractionSpec) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            model: Some(ModelProvenance { path: "m".into(), dtype: "f32".into(), ..Default::default() }),
            dataset: Some(DatasetProvenance { path: "d".into(), sha256: "ab".into(), rows: 3 }),
            extraction: Some(spec),
            ..Default::default()
        }
    }

    #[test]
    fn extraction_without_storage_fields_reads_as_f32_zstd() {
        let m: Manifest = serde_json::from_str(
            r#"{"format_version":1,"extraction":{"sites":{"vision":{"resid":[0,1]}},"selectors":["cls"],"chunk_size":8}}"#,
        )
        .unwrap();
        let e = m.extraction.unwrap();
        assert_eq!(e.part_format(), PartFormat::default());
        assert_eq!((e.store_dtype, e.compression), (StoreDType::F32, Compression::Zstd));
        assert_eq!(e.chunk_size, 8);
    }

    #[test]
    fn storage_fields_are_written_and_read_back() {
        let spec =
            ExtractionSpec { store_dtype: StoreDType::Bf16, compression: Compression::Lz4, ..Default::default() };
        let json = serde_json::to_string(&full(spec.clone())).unwrap();
        assert!(json.contains(r#""store_dtype":"bf16""#) && json.contains(r#""compression":"lz4""#), "{json}");
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.extraction, Some(spec));
    }

    #[test]
    fn another_storage_format_is_a_difference() {
        let spec =
            |store_dtype, compression| ExtractionSpec { chunk_size: 8, store_dtype, compression, ..Default::default() };
        let old = full(spec(StoreDType::F32, Compression::Zstd));
        assert_eq!(old.same_origin(&full(spec(StoreDType::F32, Compression::Zstd))), Ok(()));
        assert_eq!(
            old.same_origin(&full(spec(StoreDType::Bf16, Compression::Zstd))).unwrap_err(),
            "it was made with --store-dtype f32, not bf16"
        );
        assert_eq!(
            old.same_origin(&full(spec(StoreDType::F32, Compression::None))).unwrap_err(),
            "it was made with --compression zstd, not none"
        );
        // An old manifest (no storage fields) is f32 + zstd.
        let mut json = serde_json::to_value(&old).unwrap();
        let e = json["extraction"].as_object_mut().unwrap();
        e.remove("store_dtype");
        e.remove("compression");
        let legacy: Manifest = serde_json::from_value(json).unwrap();
        assert_eq!(legacy.same_origin(&old), Ok(()));
        assert!(legacy.same_origin(&full(spec(StoreDType::F16, Compression::Zstd))).is_err());
    }

    #[test]
    fn timestamp_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn sha256_known_value() {
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
