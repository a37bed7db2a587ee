//! The writer stage: rows streamed into part files, a chunk's parts renamed
//! into place together, then the shard's progress saved.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::Receiver;

use mmprobe_store::layout::Partition;
use mmprobe_store::logit_lens::{LensRow, write_lens_part};
use mmprobe_store::progress::{FailedInput, ShardProgress};
use mmprobe_store::{PartFormat, PartRows, PartWriter};

use rayon::prelude::*;

use crate::error::Result;

/// What the model stage sends the writer.
pub(super) enum ToWriter {
    /// A batch's rows of every partition, for chunk `.0`.
    Rows(usize, Vec<(Partition, PartRows)>),
    Lens(usize, Vec<LensRow>),
    ChunkDone(usize, Vec<FailedInput>),
}

/// Writer thread: one part file per partition and chunk, streamed batch by
/// batch; when a chunk is done its parts are renamed into place and the
/// shard's progress is saved.
pub(super) fn write_parts(
    root: &Path,
    mut status: ShardProgress,
    format: PartFormat,
    rx: Receiver<ToWriter>,
) -> Result<(ShardProgress, usize)> {
    let mut open: BTreeMap<Partition, PartWriter> = BTreeMap::new();
    let mut lens: BTreeMap<usize, Vec<LensRow>> = BTreeMap::new();
    let mut parts = 0usize;
    for msg in rx {
        match msg {
            ToWriter::Rows(chunk, batch) => {
                let mut jobs = Vec::with_capacity(batch.len());
                for (partition, rows) in batch {
                    let w = match open.remove(&partition) {
                        Some(w) => w,
                        None => PartWriter::create_with(partition.part(root, status.shard, chunk), rows.width, format)?,
                    };
                    jobs.push((partition, w, rows));
                }
                // Partitions are separate files: encoded and compressed in parallel.
                let written: Vec<Result<()>> =
                    jobs.par_iter_mut().map(|(_, w, rows)| w.write(rows).map_err(Into::into)).collect();
                open.extend(jobs.into_iter().map(|(p, w, _)| (p, w)));
                written.into_iter().collect::<Result<()>>()?;
            }
            ToWriter::Lens(chunk, rows) => lens.entry(chunk).or_default().extend(rows),
            ToWriter::ChunkDone(chunk, failures) => {
                let finished = open.len();
                let done: Vec<Result<std::path::PathBuf>> =
                    std::mem::take(&mut open).into_par_iter().map(|(_, w)| w.finish().map_err(Into::into)).collect();
                for d in done {
                    d?;
                    parts += 1;
                }
                status.chunk_parts.insert(chunk, finished);
                if let Some(rows) = lens.remove(&chunk) {
                    write_lens_part(root, status.shard, chunk, &rows)?;
                }
                status.errors.retain(|e| !failures.iter().any(|f| f.sample == e.sample));
                status.errors.extend(failures);
                status.chunks_done.insert(chunk);
                status.save(root)?;
            }
        }
    }
    // Unfinished parts (an error upstream) are discarded, never renamed.
    for (_, w) in open {
        w.abandon();
    }
    Ok((status, parts))
}
