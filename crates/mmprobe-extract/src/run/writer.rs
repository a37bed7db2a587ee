//! The writer stage: rows streamed into part files, a chunk's parts renamed
//! into place together, then the shard's progress saved.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::Receiver;

use mmprobe_store::layout::Partition;
use mmprobe_store::logit_lens::{LensRow, write_lens_part};
use mmprobe_store::progress::{FailedInput, ShardProgress};
use mmprobe_store::{PartRows, PartWriter};

use crate::error::Result;

/// What the model stage sends the writer.
pub(super) enum ToWriter {
    Rows(usize, Partition, PartRows),
    Lens(usize, Vec<LensRow>),
    ChunkDone(usize, Vec<FailedInput>),
}

/// Writer thread: one part file per partition and chunk, streamed batch by
/// batch; when a chunk is done its parts are renamed into place and the
/// shard's progress is saved.
pub(super) fn write_parts(
    root: &Path,
    mut status: ShardProgress,
    rx: Receiver<ToWriter>,
) -> Result<(ShardProgress, usize)> {
    let mut open: BTreeMap<Partition, PartWriter> = BTreeMap::new();
    let mut lens: BTreeMap<usize, Vec<LensRow>> = BTreeMap::new();
    let mut parts = 0usize;
    for msg in rx {
        match msg {
            ToWriter::Rows(chunk, partition, rows) => {
                let w = match open.entry(partition) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(PartWriter::create(partition.part(root, status.shard, chunk), rows.width)?)
                    }
                };
                w.write(&rows)?;
            }
            ToWriter::Lens(chunk, rows) => lens.entry(chunk).or_default().extend(rows),
            ToWriter::ChunkDone(chunk, failures) => {
                let finished = open.len();
                for (_, w) in std::mem::take(&mut open) {
                    w.finish()?;
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
