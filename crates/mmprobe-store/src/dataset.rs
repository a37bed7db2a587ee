//! Dataset manifests (README, "Extracting activations"): CSV, JSONL or Parquet with `id`, `image`,
//! `text`, `prompt` and any label columns, or an image folder `DIR/<label>/<file>`.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError, io};
use crate::manifest::{sha256_bytes, sha256_file};

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp"];
/// Columns with a meaning; every other column is a label.
pub const INPUT_COLUMNS: &[&str] = &["id", "image", "text", "prompt"];

/// A dataset, read whole: the inputs per row plus a frame of every column.
pub struct Dataset {
    pub path: PathBuf,
    /// Folder that relative image paths are resolved against.
    pub root: PathBuf,
    pub sha256: String,
    /// `sample` (u32, the row number) then every column as given; `id` filled in.
    pub frame: DataFrame,
    pub ids: Vec<String>,
    pub images: Option<Vec<Option<String>>>,
    pub texts: Option<Vec<Option<String>>>,
    pub prompts: Option<Vec<Option<String>>>,
    /// An image folder's files that are not samples, as "path (why)".
    pub skipped: Vec<String>,
    /// Encoded images held in the file itself (Hugging Face datasets' `{bytes, path}` image struct).
    pub image_bytes: Option<Vec<Option<Vec<u8>>>>,
}

impl Dataset {
    pub fn open(path: &Path) -> Result<Dataset> {
        let err = |message: String| StoreError::Dataset { path: path.to_path_buf(), message };
        if !path.exists() {
            return Err(err("does not exist".into()));
        }
        let mut skipped = Vec::new();
        let (frame, root, sha256) = if path.is_dir() {
            let (frame, sha) = read_image_folder(path, &mut skipped)?;
            (frame, path.to_path_buf(), sha)
        } else {
            let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            let file = || File::open(path).map_err(io(path));
            let frame = match ext.as_str() {
                "csv" => CsvReadOptions::default()
                    .with_has_header(true)
                    .with_infer_schema_length(None)
                    .into_reader_with_file_handle(file()?)
                    .finish(),
                "jsonl" | "ndjson" => JsonReader::new(file()?).with_json_format(JsonFormat::JsonLines).finish(),
                "parquet" => ParquetReader::new(file()?).finish(),
                other => {
                    return Err(err(format!("unknown format '.{other}' (use .csv, .jsonl, .parquet or a folder)")));
                }
            }
            .map_err(|e| err(explain(path, &ext, &e.to_string())))?;
            let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (frame, root, sha256_file(path)?)
        };
        let mut d = Self::from_frame(path, root, sha256, frame)?;
        d.skipped = skipped;
        Ok(d)
    }

    fn from_frame(path: &Path, root: PathBuf, sha256: String, mut frame: DataFrame) -> Result<Dataset> {
        let err = |message: String| StoreError::Dataset { path: path.to_path_buf(), message };
        let image_bytes = split_image_struct(&mut frame).map_err(|e| err(format!("column 'image': {e}")))?;
        let n = frame.height();
        if n == 0 {
            return Err(err("it has no rows".into()));
        }
        if n > u32::MAX as usize {
            return Err(err(format!("{n} rows is more than a store can index")));
        }
        let strings = |name: &str| -> Result<Option<Vec<Option<String>>>> {
            let Ok(c) = frame.column(name) else { return Ok(None) };
            let c = c.cast(&DataType::String).map_err(|e| err(format!("column '{name}': {e}")))?;
            let ca = c.str().map_err(|e| err(e.to_string()))?;
            Ok(Some(ca.iter().map(|v| v.map(str::to_string)).collect()))
        };
        let ids: Vec<String> = match strings("id")? {
            Some(v) => v
                .into_iter()
                .enumerate()
                .map(|(i, id)| id.ok_or_else(|| err(format!("row {i}: id is empty"))))
                .collect::<Result<_>>()?,
            None => (0..n).map(|i| i.to_string()).collect(),
        };
        let mut seen = HashSet::with_capacity(n);
        for (i, id) in ids.iter().enumerate() {
            if !seen.insert(id.as_str()) {
                return Err(err(format!("row {i}: duplicate id '{id}'")));
            }
        }
        let images = strings("image")?;
        let texts = strings("text")?;
        let prompts = strings("prompt")?;
        if images.is_none() && texts.is_none() && prompts.is_none() {
            let cols: Vec<String> = frame.get_column_names().iter().map(|c| c.to_string()).collect();
            return Err(err(format!("it needs an 'image' or 'text' column (it has: {})", cols.join(", "))));
        }
        let mut columns = vec![Column::new("sample".into(), (0..n as u32).collect::<Vec<u32>>())];
        columns.push(Column::new("id".into(), ids.clone()));
        for c in frame.columns() {
            if c.name().as_str() != "id" && c.name().as_str() != "sample" {
                columns.push(c.clone());
            }
        }
        let frame = DataFrame::new(n, columns).map_err(|e| err(e.to_string()))?;
        Ok(Dataset {
            path: path.to_path_buf(),
            root,
            sha256,
            frame,
            ids,
            images,
            texts,
            prompts,
            skipped: Vec::new(),
            image_bytes,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Row `i`'s image path, resolved against the manifest's folder.
    pub fn image_path(&self, i: usize) -> Option<PathBuf> {
        let p = self.images.as_ref()?.get(i)?.as_deref()?;
        let p = Path::new(p);
        Some(if p.is_absolute() { p.to_path_buf() } else { self.root.join(p) })
    }

    /// Row `i`'s encoded image when the dataset holds it (then `image_path` is only its name).
    pub fn image_bytes(&self, i: usize) -> Option<&[u8]> {
        self.image_bytes.as_ref()?.get(i)?.as_deref()
    }

    pub fn text(&self, i: usize) -> Option<&str> {
        self.texts.as_ref()?.get(i)?.as_deref()
    }

    pub fn prompt(&self, i: usize) -> Option<&str> {
        self.prompts.as_ref()?.get(i)?.as_deref()
    }

    /// The label columns (everything but sample, id, image, text, prompt).
    pub fn label_columns(&self) -> Vec<String> {
        self.frame
            .get_column_names()
            .iter()
            .map(|c| c.to_string())
            .filter(|c| c != "sample" && !INPUT_COLUMNS.contains(&c.as_str()))
            .collect()
    }
}

/// Hugging Face datasets write an image as a struct {bytes, path}: the bytes
/// are taken out, and the column keeps the path (samples.parquet then holds
/// names, not every image again).
fn split_image_struct(frame: &mut DataFrame) -> PolarsResult<Option<Vec<Option<Vec<u8>>>>> {
    let Ok(col) = frame.column("image") else { return Ok(None) };
    if !matches!(col.dtype(), DataType::Struct(_)) {
        return Ok(None);
    }
    let st = col.as_materialized_series().struct_()?.clone();
    let bytes = st.field_by_name("bytes")?;
    let bytes: Vec<Option<Vec<u8>>> = bytes.binary()?.iter().map(|b| b.map(<[u8]>::to_vec)).collect();
    let paths = match st.field_by_name("path") {
        Ok(p) => p.cast(&DataType::String)?,
        Err(_) => Series::full_null("image".into(), frame.height(), &DataType::String),
    };
    frame.replace("image", paths.with_name("image".into()).into_column())?;
    Ok(Some(bytes))
}

/// A reader's failure in one line, naming the line at fault where the file
/// shows it (polars' own messages name neither and span several lines).
fn explain(path: &Path, ext: &str, polars_message: &str) -> String {
    let first_line = polars_message.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    let Ok(text) = std::fs::read_to_string(path) else { return first_line };
    let found = match ext {
        "csv" => {
            ragged_csv_line(&text).map(|(line, n, header)| format!("line {line} has {n} fields, the header {header}"))
        }
        "jsonl" | "ndjson" => text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).find_map(|(i, l)| {
            serde_json::from_str::<serde_json::Value>(l).err().map(|e| format!("line {} is not valid JSON: {e}", i + 1))
        }),
        _ => None,
    };
    found.unwrap_or(first_line)
}

/// The first CSV record whose field count differs from the header's:
/// (its first line, 1-based; its fields; the header's). Quoted fields may hold commas and newlines.
fn ragged_csv_line(text: &str) -> Option<(usize, usize, usize)> {
    let (mut line, mut start, mut fields, mut quoted) = (1, 1, 1, false);
    let mut header = None;
    let mut empty = true;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields += 1,
            '\n' => {
                line += 1;
                if quoted {
                    continue;
                }
                if !empty {
                    match header {
                        None => header = Some(fields),
                        Some(h) if h != fields => return Some((start, fields, h)),
                        Some(_) => {}
                    }
                }
                (start, fields, empty) = (line, 1, true);
                continue;
            }
            '\r' => continue,
            _ => {}
        }
        empty = false;
    }
    match header {
        Some(h) if !empty && h != fields => Some((start, fields, h)),
        _ => None,
    }
}

/// `DIR/<label>/<file>` -> id, image (relative), label. Hashes the listing.
fn read_image_folder(dir: &Path, skipped: &mut Vec<String>) -> Result<(DataFrame, String)> {
    let err = |message: String| StoreError::Dataset { path: dir.to_path_buf(), message };
    let mut rows: Vec<(String, String, u64)> = Vec::new();
    let mut labels: Vec<_> =
        std::fs::read_dir(dir).map_err(io(dir))?.collect::<std::io::Result<Vec<_>>>().map_err(io(dir))?;
    labels.sort_by_key(|e| e.file_name());
    for f in labels.iter().filter(|e| !e.path().is_dir()) {
        skipped.push(format!("{} (not in a <label>/ folder)", f.file_name().to_string_lossy()));
    }
    for l in labels.into_iter().filter(|e| e.path().is_dir()) {
        let label = l.file_name().to_string_lossy().into_owned();
        let mut files: Vec<_> = std::fs::read_dir(l.path())
            .map_err(io(&l.path()))?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io(dir))?;
        files.sort_by_key(|e| e.file_name());
        for f in files {
            let p = f.path();
            let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            let rel = format!("{label}/{}", f.file_name().to_string_lossy());
            if !p.is_file() {
                skipped.push(format!("{rel} (a folder below <label>/)"));
            } else if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                let size = f.metadata().map_err(io(&p))?.len();
                rows.push((label.clone(), rel, size));
            } else {
                skipped.push(format!("{rel} (not an image extension: {})", IMAGE_EXTENSIONS.join(", ")));
            }
        }
    }
    if rows.is_empty() {
        return Err(err("no images under <label>/ folders".into()));
    }
    let mut h = Sha256::new();
    for (_, rel, size) in &rows {
        h.update(format!("{rel}\t{size}\n").as_bytes());
    }
    let sha = sha256_bytes(&h.finalize());
    let n = rows.len();
    let frame = DataFrame::new(
        n,
        vec![
            Column::new("id".into(), rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>()),
            Column::new("image".into(), rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>()),
            Column::new("label".into(), rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>()),
        ],
    )
    .map_err(|e| err(e.to_string()))?;
    Ok((frame, sha))
}
