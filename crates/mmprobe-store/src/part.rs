//! Part files: `sample` (u32), `pos` (i32, -1 for pooled rows), `emb`
//! (Array(Float32, d), or Array(Float16, d) for f16 storage: [`StoreDType`]).
//! Written batch by batch to a temporary and renamed into place when the
//! chunk is complete.

use std::fs::File;
use std::path::{Path, PathBuf};

use half::slice::HalfFloatSliceExt;
use ndarray::Array2;
use polars::io::parquet::write::{BatchedWriter, KeyValueMetadata};
use polars::prelude::*;

use crate::error::{Result, StoreError, io, pq};
use crate::format::{DTYPE_KEY, PartFormat, StoreDType};
use crate::layout::{Partition, part_files, tmp_path};
use crate::store::open_parquet;

/// Rows for one partition: `data` is row-major [rows, width].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartRows {
    pub width: usize,
    pub sample: Vec<u32>,
    pub pos: Vec<i32>,
    pub data: Vec<f32>,
}

impl PartRows {
    pub fn len(&self) -> usize {
        self.sample.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sample.is_empty()
    }

    fn frame(&self, dtype: StoreDType) -> PolarsResult<DataFrame> {
        let values = match dtype {
            StoreDType::F32 => Series::new("emb".into(), self.data.as_slice()),
            StoreDType::F16 => {
                // half's slice conversion uses the CPU's F16C instructions where it has
                // them; polars' cast converts one value at a time.
                let mut halves = vec![half::f16::ZERO; self.data.len()];
                halves.convert_from_f32_slice(&self.data);
                Float16Chunked::from_vec("emb".into(), halves.into_iter().map(pf16).collect()).into_series()
            }
            StoreDType::Bf16 => {
                let rounded = self.data.iter().map(|&v| StoreDType::round_bf16(v)).collect();
                Float32Chunked::from_vec("emb".into(), rounded).into_series()
            }
        };
        let emb =
            values.reshape_array(&[ReshapeDimension::Infer, ReshapeDimension::new_dimension(self.width as u64)])?;
        DataFrame::new(
            self.len(),
            vec![
                Column::new("sample".into(), self.sample.as_slice()),
                Column::new("pos".into(), self.pos.as_slice()),
                emb.into_column(),
            ],
        )
    }
}

/// The columns of an f32 part of width `width`.
pub fn schema(width: usize) -> Schema {
    schema_with(width, StoreDType::F32)
}

/// The columns of a part of width `width` stored as `dtype`.
pub fn schema_with(width: usize, dtype: StoreDType) -> Schema {
    let inner = match dtype {
        StoreDType::F16 => DataType::Float16,
        StoreDType::F32 | StoreDType::Bf16 => DataType::Float32,
    };
    Schema::from_iter([
        Field::new("sample".into(), DataType::UInt32),
        Field::new("pos".into(), DataType::Int32),
        Field::new("emb".into(), DataType::Array(Box::new(inner), width)),
    ])
}

/// The smallest magnitude f16 rounds to infinity (65504 + half its last step).
const F16_OVERFLOW: f32 = 65520.0;

/// One part file being written.
pub struct PartWriter {
    path: PathBuf,
    tmp: PathBuf,
    width: usize,
    format: PartFormat,
    writer: BatchedWriter<File>,
}

impl PartWriter {
    /// A part in the default format (f32, zstd).
    pub fn create(path: PathBuf, width: usize) -> Result<Self> {
        Self::create_with(path, width, PartFormat::default())
    }

    /// A part storing `emb` as `format.dtype`, pages compressed with `format.compression`.
    pub fn create_with(path: PathBuf, width: usize, format: PartFormat) -> Result<Self> {
        let dir = path.parent().expect("part files live in a partition folder");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = tmp_path(&path);
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let metadata = KeyValueMetadata::from_static(vec![(DTYPE_KEY.into(), format.dtype.to_string())]);
        let writer = ParquetWriter::new(file)
            .with_compression(format.compression.parquet())
            .with_key_value_metadata(Some(metadata))
            .batched(&schema_with(width, format.dtype))
            .map_err(pq(&tmp))?;
        Ok(PartWriter { path, tmp, width, format, writer })
    }

    pub fn format(&self) -> PartFormat {
        self.format
    }

    pub fn write(&mut self, rows: &PartRows) -> Result<()> {
        if rows.width != self.width {
            return Err(StoreError::Parquet {
                path: self.path.clone(),
                message: format!("rows of width {} in a part of width {}", rows.width, self.width),
            });
        }
        if self.format.dtype == StoreDType::F16
            && let Some(i) = rows.data.iter().position(|v| v.is_finite() && v.abs() >= F16_OVERFLOW)
        {
            return Err(StoreError::F16Range {
                path: self.path.clone(),
                value: rows.data[i],
                sample: rows.sample[i / self.width.max(1)],
            });
        }
        let df = rows.frame(self.format.dtype).map_err(pq(&self.tmp))?;
        self.writer.write_batch(&df).map_err(pq(&self.tmp))
    }

    /// Drops an unfinished part: its temporary is removed, nothing appears.
    pub fn abandon(self) {
        drop(self.writer);
        let _ = std::fs::remove_file(&self.tmp);
    }

    /// Completes the file and moves it into place.
    pub fn finish(self) -> Result<PathBuf> {
        self.writer.finish().map_err(pq(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        Ok(self.path)
    }
}

/// Writes a whole part at once (atomically), f32 and zstd.
pub fn write_part(path: PathBuf, rows: &PartRows) -> Result<PathBuf> {
    write_part_with(path, rows, PartFormat::default())
}

/// Writes a whole part at once (atomically) in `format`.
pub fn write_part_with(path: PathBuf, rows: &PartRows, format: PartFormat) -> Result<PathBuf> {
    let mut w = PartWriter::create_with(path, rows.width, format)?;
    match w.write(rows) {
        Ok(()) => w.finish(),
        Err(e) => {
            w.abandon();
            Err(e)
        }
    }
}

/// Every row of a partition, sorted by (sample, pos).
#[derive(Debug, Clone)]
pub struct Activations {
    pub partition: Partition,
    pub sample: Vec<u32>,
    pub pos: Vec<i32>,
    pub matrix: Array2<f32>,
}

fn read_part(path: &Path, width: &mut Option<usize>, out: &mut PartRows) -> Result<()> {
    let df = ParquetReader::new(open_parquet(path)?).finish().map_err(pq(path))?;
    let bad = |message: String| StoreError::Parquet { path: path.to_path_buf(), message };
    let sample = df.column("sample").map_err(pq(path))?.cast(&DataType::UInt32).map_err(pq(path))?;
    let pos = match df.column("pos") {
        Ok(c) => Some(c.cast(&DataType::Int32).map_err(pq(path))?),
        Err(_) => None,
    };
    let emb = df.column("emb").map_err(pq(path))?;
    let DataType::Array(_, w) = emb.dtype() else {
        return Err(bad(format!("emb is {}, not a fixed-width array", emb.dtype())));
    };
    let w = *w;
    match width {
        Some(prev) if *prev != w => return Err(bad(format!("emb has width {w}, other parts {prev}"))),
        _ => *width = Some(w),
    }
    let values = emb
        .as_materialized_series()
        .rechunk()
        .array()
        .map_err(pq(path))?
        .get_inner()
        .cast(&DataType::Float32)
        .map_err(pq(path))?;
    let values = values.f32().map_err(pq(path))?;
    if values.null_count() > 0 || emb.null_count() > 0 {
        return Err(bad("emb has nulls".into()));
    }
    out.data.extend(values.into_no_null_iter());
    out.sample.extend(sample.u32().map_err(pq(path))?.into_no_null_iter());
    match pos {
        Some(p) => out.pos.extend(p.i32().map_err(pq(path))?.into_no_null_iter()),
        None => out.pos.extend(std::iter::repeat_n(-1, df.height())),
    }
    Ok(())
}

/// The distinct sample ids of one partition, read from the `sample` column only.
pub fn partition_samples(root: &Path, partition: Partition) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for path in part_files(&partition.dir(root))? {
        let df = ParquetReader::new(open_parquet(&path)?)
            .with_columns(Some(vec!["sample".into()]))
            .finish()
            .map_err(pq(&path))?;
        let s = df.column("sample").map_err(pq(&path))?.cast(&DataType::UInt32).map_err(pq(&path))?;
        out.extend(s.u32().map_err(pq(&path))?.into_no_null_iter());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Reads every part of one partition folder.
pub fn read_partition(root: &Path, partition: Partition) -> Result<Activations> {
    let dir = partition.dir(root);
    let files = part_files(&dir)?;
    if files.is_empty() {
        return Err(StoreError::NoPartition(partition.to_string()));
    }
    let mut width = None;
    let mut rows = PartRows::default();
    for f in &files {
        read_part(f, &mut width, &mut rows)?;
    }
    let width = width.unwrap_or(0);
    let n = rows.sample.len();
    if let Some(i) = rows.data.iter().position(|v| !v.is_finite()) {
        return Err(StoreError::BadPartition {
            partition: partition.to_string(),
            message: format!(
                "non-finite value {} at row {} (sample {})",
                rows.data[i],
                i / width.max(1),
                rows.sample[i / width.max(1)]
            ),
        });
    }
    // Sort by (sample, pos): part order must not matter.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (rows.sample[i], rows.pos[i]));
    // A partition holds each (sample, pos) once: a duplicate would put one
    // sample on both sides of a split and count it twice.
    let key = |i: usize| (rows.sample[i], rows.pos[i]);
    let dups: Vec<(u32, i32)> = order.windows(2).filter(|w| key(w[0]) == key(w[1])).map(|w| key(w[0])).collect();
    if let Some(&(s, p)) = dups.first() {
        return Err(StoreError::BadPartition {
            partition: partition.to_string(),
            message: format!(
                "{} duplicate rows, first (sample {s}, pos {p}): a part file was written twice or by two runs",
                dups.len()
            ),
        });
    }
    let mut matrix = Array2::<f32>::zeros((n, width));
    for (r, &i) in order.iter().enumerate() {
        matrix
            .row_mut(r)
            .as_slice_mut()
            .expect("standard layout")
            .copy_from_slice(&rows.data[i * width..(i + 1) * width]);
    }
    Ok(Activations {
        partition,
        sample: order.iter().map(|&i| rows.sample[i]).collect(),
        pos: order.iter().map(|&i| rows.pos[i]).collect(),
        matrix,
    })
}
