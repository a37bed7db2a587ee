//! Part files: `sample` (u32), `pos` (i32, -1 for pooled rows), `emb`
//! (Array(Float32, d)). Written batch by batch to a temporary and renamed
//! into place when the chunk is complete.

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use polars::io::parquet::write::BatchedWriter;
use polars::prelude::*;

use crate::error::{Result, StoreError, io, pq};
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

    fn frame(&self) -> PolarsResult<DataFrame> {
        let emb = Series::new("emb".into(), self.data.as_slice())
            .reshape_array(&[ReshapeDimension::Infer, ReshapeDimension::new_dimension(self.width as u64)])?;
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

pub fn schema(width: usize) -> Schema {
    Schema::from_iter([
        Field::new("sample".into(), DataType::UInt32),
        Field::new("pos".into(), DataType::Int32),
        Field::new("emb".into(), DataType::Array(Box::new(DataType::Float32), width)),
    ])
}

/// One part file being written.
pub struct PartWriter {
    path: PathBuf,
    tmp: PathBuf,
    width: usize,
    writer: BatchedWriter<File>,
}

impl PartWriter {
    pub fn create(path: PathBuf, width: usize) -> Result<Self> {
        let dir = path.parent().expect("part files live in a partition folder");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = tmp_path(&path);
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let writer = ParquetWriter::new(file)
            .with_compression(ParquetCompression::Zstd(None))
            .batched(&schema(width))
            .map_err(pq(&tmp))?;
        Ok(PartWriter { path, tmp, width, writer })
    }

    pub fn write(&mut self, rows: &PartRows) -> Result<()> {
        if rows.width != self.width {
            return Err(StoreError::Parquet {
                path: self.path.clone(),
                message: format!("rows of width {} in a part of width {}", rows.width, self.width),
            });
        }
        let df = rows.frame().map_err(pq(&self.tmp))?;
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

/// Writes a whole part at once (atomically).
pub fn write_part(path: PathBuf, rows: &PartRows) -> Result<PathBuf> {
    let mut w = PartWriter::create(path, rows.width)?;
    w.write(rows)?;
    w.finish()
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
