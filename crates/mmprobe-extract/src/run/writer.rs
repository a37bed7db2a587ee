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

use super::Busy;
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
/// shard's progress is saved. Returns the progress, the parts written, and
/// the thread's time at work and waiting for rows.
pub(super) fn write_parts(
    root: &Path,
    status: ShardProgress,
    format: PartFormat,
    rx: Receiver<ToWriter>,
) -> Result<(ShardProgress, usize, Busy)> {
    let mut writer = Writer { root, status, format, open: BTreeMap::new(), lens: BTreeMap::new(), parts: 0 };
    let mut time = Busy::default();
    while let Ok(msg) = time.wait(|| rx.recv()) {
        if let Err(e) = time.work(|| writer.take(msg)) {
            writer.abandon();
            return Err(e);
        }
    }
    writer.abandon();
    Ok((writer.status, writer.parts, time))
}

/// The writer's state between messages.
struct Writer<'a> {
    root: &'a Path,
    status: ShardProgress,
    format: PartFormat,
    open: BTreeMap<Partition, PartWriter>,
    lens: BTreeMap<usize, Vec<LensRow>>,
    parts: usize,
}

impl Writer<'_> {
    fn take(&mut self, msg: ToWriter) -> Result<()> {
        let (root, format) = (self.root, self.format);
        let Writer { status, open, lens, parts, .. } = self;
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
                    std::mem::take(open).into_par_iter().map(|(_, w)| w.finish().map_err(Into::into)).collect();
                for d in done {
                    d?;
                    *parts += 1;
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
        Ok(())
    }

    /// Unfinished parts (an error upstream, or here) are discarded, never renamed.
    fn abandon(&mut self) {
        for (_, w) in std::mem::take(&mut self.open) {
            w.abandon();
        }
    }
}
