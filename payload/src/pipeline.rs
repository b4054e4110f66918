//! The parallel chunk pipeline: read frames in order, decode and verify them on every core,
//! hand verified chunks to the writer in order.
//!
//! ```text
//! reader thread ──frames──► N decoder threads ──verified chunks──► caller's sink (in order)
//!       ▲                                                              │
//!       └─────────────────────── buffer pool (bounded) ◄───────────────┘
//! ```
//!
//! Frames that reference the image bytes before them (a version 2 payload with a prefix,
//! [`ChunkDecoder::is_sequential`]) are decompressed in order by the one decoder the caller
//! hands in, which holds that prefix, straight into the job's buffer
//! ([`ChunkDecoder::decode_unchecked_append`]); their SHA-256 is checked on `threads` other
//! threads. Independent frames are decoded and checked on `threads` decoders.
//!
//! Memory is bounded by the pool: [`buffer_pairs`] pairs of (frame, chunk) buffers, each at
//! most one frame bound and one chunk, within [`BUFFER_BUDGET`] whatever the image size. A chunk
//! reaches the sink only after its SHA-256 matched; the first failure in chunk order stops
//! everything, and every chunk before it has been handed to the sink.

use crate::{self as payload, ChunkDecoder, ChunkEntry, PayloadError, ReadError};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

/// Budget for frame and chunk buffers in flight, in bytes: three pairs at the default 4 MiB
/// chunk size, so decoding on two cores overlaps reading (the install's peak RSS stays under
/// 32 MiB with the read-back buffer and the binary itself).
pub const BUFFER_BUDGET: usize = 25 << 20;

/// Image bytes the pool holds at least, within [`BUFFER_BUDGET`]: the writer stalls now and then
/// (page-cache allocation, writeback), and the threads before it go on meanwhile only as far as
/// the pool lets them. With small jobs, eight of them (1 MiB) left the reader waiting for a
/// buffer 1.2 s of a 1.6 s install of a 461 MiB image; 2 MiB took it to 1.3 s.
pub const IN_FLIGHT_BYTES: usize = 2 << 20;

/// How many (frame, chunk) buffer pairs the pipeline keeps for `threads` decoders of chunks
/// (or jobs) of up to `chunk_size` bytes.
pub fn buffer_pairs(chunk_size: u32, threads: usize) -> usize {
    let pair = chunk_size as usize + payload::max_frame_len(chunk_size) as usize;
    let enough = (threads * 2 + 2).max(IN_FLIGHT_BYTES / chunk_size as usize);
    (BUFFER_BUDGET / pair).clamp(2, enough)
}

/// Read buffer of the frame reader (a larger frame is read past it, straight into its buffer).
const FRAME_READ_BUFFER: usize = 256 << 10;

/// Receives the verified chunks in order, a run of consecutive ones at a time: the index of
/// the first, their table entries, and their bytes one after the other (the decoder's buffer
/// itself: a writer can put a run of small chunks on the disk in one write, without gathering
/// them first).
pub type ChunkSink<'a, E> = dyn FnMut(u32, &[ChunkEntry], &[u8]) -> Result<(), E> + 'a;

/// Why the pipeline stopped.
#[derive(Debug)]
pub enum PipelineError<E> {
    /// The payload is bad at this chunk (or, for index = count, after the last one).
    Payload(PayloadError),
    /// Reading the source failed at this payload offset.
    Read {
        /// Payload offset reached.
        offset: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// The sink failed.
    Sink(E),
}

/// Consecutive chunks `index..index + count`: their frames one after the other in `frame`,
/// then (once decoded) their bytes one after the other in `chunk`. Small chunks travel
/// together, so each is not a hand-over between threads.
struct Job {
    index: u32,
    count: u32,
    frame: Vec<u8>,
    chunk: Vec<u8>,
}

impl Job {
    /// The entries of the job's chunks.
    fn entries<'e>(&self, entries: &'e [ChunkEntry]) -> &'e [ChunkEntry] {
        &entries[self.index as usize..(self.index + self.count) as usize]
    }

    /// The same job holding only its first `n` chunks (the ones before a failure).
    fn truncated(mut self, n: u32, entries: &[ChunkEntry]) -> Job {
        let keep = &self.entries(entries)[..n as usize];
        self.frame
            .truncate(keep.iter().map(|e| e.frame_len as usize).sum());
        self.chunk
            .truncate(keep.iter().map(|e| e.image_len as usize).sum());
        self.count = n;
        self
    }
}

/// The job's chunks `first..` (`entries`) with their slices of `bytes` (their frames, or their
/// decoded bytes, one after the other: `len` says which length).
fn split<'a>(
    bytes: &'a [u8],
    first: u32,
    entries: &'a [ChunkEntry],
    len: fn(&ChunkEntry) -> u32,
) -> impl Iterator<Item = (u32, &'a ChunkEntry, &'a [u8])> + 'a {
    let mut at = 0;
    entries.iter().enumerate().map(move |(k, e)| {
        let n = len(e) as usize;
        let slice = &bytes[at..at + n];
        at += n;
        (first + k as u32, e, slice)
    })
}

fn frame_len(e: &ChunkEntry) -> u32 {
    e.frame_len
}

fn image_len(e: &ChunkEntry) -> u32 {
    e.image_len
}

/// Chunks gather into one job while their bytes stay within this (a larger chunk is a job
/// alone).
const JOB_IMAGE_BYTES: u64 = 128 << 10;

enum Msg {
    Chunk(Job),
    Failed(u32, PipelineErrorNoSink),
    End,
}

enum PipelineErrorNoSink {
    Payload(PayloadError),
    Read { offset: u64, source: std::io::Error },
}

fn from_read(e: ReadError, offset: u64) -> PipelineErrorNoSink {
    match e {
        ReadError::Payload(p) => PipelineErrorNoSink::Payload(p),
        ReadError::Io(source) => PipelineErrorNoSink::Read { offset, source },
    }
}

/// Streams chunks `start..` of `entries` from `reader` (positioned at chunk `start`'s frame),
/// checks the stream ends after the last frame, and calls `sink(first, entries, bytes)` for
/// each run of verified chunks in order. `decoder` is made for the payload's manifest
/// ([`ChunkDecoder::for_manifest`]) and, for sequential frames, has been fed the image bytes
/// before chunk `start`.
pub fn run<E: Send>(
    reader: &mut (dyn Read + Send),
    entries: &[ChunkEntry],
    start: u32,
    chunk_size: u32,
    threads: usize,
    decoder: ChunkDecoder,
    sink: &mut ChunkSink<'_, E>,
) -> Result<(), PipelineError<E>> {
    let threads = threads.max(1);
    let sequential = decoder.is_sequential();
    let pairs = buffer_pairs(
        chunk_size.max(JOB_IMAGE_BYTES as u32),
        threads + usize::from(sequential),
    );
    let count = entries.len() as u32;
    let end_offset = entries
        .last()
        .map_or(0, |e| e.payload_offset + u64::from(e.frame_len));
    let (pool_tx, pool_rx) = sync_channel::<(Vec<u8>, Vec<u8>)>(pairs);
    for _ in 0..pairs {
        pool_tx
            .send((Vec::new(), Vec::new()))
            .expect("pool has room");
    }
    let (job_tx, job_rx) = sync_channel::<Job>(pairs);
    let (msg_tx, msg_rx) = sync_channel::<Msg>(pairs + 1);
    let mut decoders = Vec::new();
    let mut in_order = None;
    if sequential {
        in_order = Some(decoder);
    } else {
        decoders.push(decoder);
        for _ in 1..threads {
            decoders.push(
                ChunkDecoder::new().map_err(|source| PipelineError::Read { offset: 0, source })?,
            );
        }
    }

    // Sequential frames go from the reader to the one decompressing thread, then to the
    // checkers; independent ones from the reader to the decoders.
    let (checked_tx, checked_rx) = sync_channel::<Job>(pairs);
    let checked_rx = Mutex::new(checked_rx);
    let (job_rx, shared_job_rx) = if sequential {
        (Some(job_rx), None)
    } else {
        (None, Some(Mutex::new(job_rx)))
    };
    std::thread::scope(|s| {
        // Reader: frames in payload order, each into a pooled buffer; small frames (version
        // 2) through a buffer, so each is not one read of the source.
        let reader_msgs = msg_tx.clone();
        s.spawn(move || {
            let mut reader = std::io::BufReader::with_capacity(FRAME_READ_BUFFER, reader);
            read_frames(
                &mut reader,
                entries,
                start,
                end_offset,
                pool_rx,
                job_tx,
                reader_msgs,
            )
        });
        if let (Some(decoder), Some(job_rx)) = (in_order, job_rx) {
            // One thread decompresses in order (each frame needs the bytes before it), the
            // others check SHA-256s.
            let msgs = msg_tx.clone();
            s.spawn(move || decompress_in_order(decoder, job_rx, entries, checked_tx, msgs));
            for _ in 0..threads {
                let msgs = msg_tx.clone();
                let jobs = &checked_rx;
                s.spawn(move || check_chunks(jobs, entries, msgs));
            }
        } else if let Some(job_rx) = &shared_job_rx {
            // Decoders: decompress with a capped window and verify the SHA-256.
            drop(checked_tx);
            for decoder in decoders {
                let msgs = msg_tx.clone();
                s.spawn(move || decode_chunks(decoder, job_rx, entries, msgs));
            }
        }
        drop(msg_tx);
        // Writer (this thread): in chunk order, then the end-of-stream verdict.
        write_in_order(msg_rx, pool_tx, entries, start, count, sink)
    })
}

/// Sends what a failed job did before chunk `at` on, then the failure.
fn fail_at(
    job: Job,
    at: u32,
    entries: &[ChunkEntry],
    why: PipelineErrorNoSink,
    msgs: &SyncSender<Msg>,
) {
    let done = at - job.index;
    if done > 0 {
        let _ = msgs.send(Msg::Chunk(job.truncated(done, entries)));
    }
    let _ = msgs.send(Msg::Failed(at, why));
}

/// Sends a decoded or checked job on: whole, or its chunks before the first failure and then
/// the failure. Whether the thread should go on (no failure, and the writer still listens).
fn report(
    job: Job,
    failed: Option<(u32, PayloadError)>,
    entries: &[ChunkEntry],
    msgs: &SyncSender<Msg>,
) -> bool {
    match failed {
        Some((index, e)) => {
            fail_at(job, index, entries, PipelineErrorNoSink::Payload(e), msgs);
            false
        }
        None => msgs.send(Msg::Chunk(job)).is_ok(),
    }
}

/// Decompresses frames in chunk order with the prefix `decoder` keeps, handing each job on to
/// be checked.
fn decompress_in_order(
    mut decoder: ChunkDecoder,
    jobs: Receiver<Job>,
    entries: &[ChunkEntry],
    checked: SyncSender<Job>,
    msgs: SyncSender<Msg>,
) {
    for mut job in jobs {
        job.chunk.clear();
        let mut failed = None;
        for (index, entry, frame) in split(&job.frame, job.index, job.entries(entries), frame_len) {
            // On failure the job is cut back to its chunks before this one (`truncated`).
            if let Err(e) = decoder.decode_unchecked_append(index, entry, frame, &mut job.chunk) {
                failed = Some((index, e));
                break;
            }
        }
        if let Some((index, e)) = failed {
            // The chunks before it still need their check: they go on, then the failure.
            let done = index - job.index;
            if done > 0 && checked.send(job.truncated(done, entries)).is_err() {
                return;
            }
            let _ = msgs.send(Msg::Failed(index, PipelineErrorNoSink::Payload(e)));
            return;
        }
        if checked.send(job).is_err() {
            return;
        }
    }
}

/// Checks decompressed chunks against their SHA-256.
fn check_chunks(jobs: &Mutex<Receiver<Job>>, entries: &[ChunkEntry], msgs: SyncSender<Msg>) {
    loop {
        let job = jobs.lock().expect("check queue lock").recv();
        let Ok(job) = job else {
            return;
        };
        let failed = split(&job.chunk, job.index, job.entries(entries), image_len).find_map(
            |(index, entry, bytes)| {
                payload::check_chunk(index, entry, bytes)
                    .err()
                    .map(|e| (index, e))
            },
        );
        if !report(job, failed, entries, &msgs) {
            return;
        }
    }
}

fn read_frames(
    reader: &mut (dyn Read + Send),
    entries: &[ChunkEntry],
    start: u32,
    end_offset: u64,
    pool: Receiver<(Vec<u8>, Vec<u8>)>,
    jobs: SyncSender<Job>,
    msgs: SyncSender<Msg>,
) {
    let mut next = start as usize;
    while next < entries.len() {
        let Ok((mut frame, chunk)) = pool.recv() else {
            return;
        };
        frame.clear();
        let mut job = Job {
            index: next as u32,
            count: 0,
            frame,
            chunk,
        };
        let mut image_bytes = 0u64;
        while let Some(entry) = entries.get(next) {
            let len = u64::from(entry.image_len);
            if job.count > 0 && image_bytes + len > JOB_IMAGE_BYTES {
                break;
            }
            let index = next as u32;
            // Straight into the job's buffer, after the frames before it (the table bounds
            // every frame length).
            let at = job.frame.len();
            job.frame.resize(at + entry.frame_len as usize, 0);
            let read =
                payload::read_region(reader, &mut job.frame[at..], "frame", entry.payload_offset);
            if let Err(e) = read {
                // The frames read so far go on as a job; the failure follows in order.
                job.frame.truncate(at);
                if job.count > 0 && jobs.send(job).is_err() {
                    return;
                }
                let _ = msgs.send(Msg::Failed(index, from_read(e, entry.payload_offset)));
                return;
            }
            job.count += 1;
            image_bytes += len;
            next += 1;
        }
        if jobs.send(job).is_err() {
            return;
        }
    }
    let verdict = match payload::expect_end(reader, end_offset) {
        Ok(()) => Msg::End,
        Err(e) => Msg::Failed(entries.len() as u32, from_read(e, end_offset)),
    };
    let _ = msgs.send(verdict);
}

fn decode_chunks(
    mut decoder: ChunkDecoder,
    jobs: &Mutex<Receiver<Job>>,
    entries: &[ChunkEntry],
    msgs: SyncSender<Msg>,
) {
    loop {
        let job = jobs.lock().expect("job queue lock").recv();
        let Ok(mut job) = job else {
            return;
        };
        job.chunk.clear();
        let mut failed = None;
        for (index, entry, frame) in split(&job.frame, job.index, job.entries(entries), frame_len) {
            // Each chunk decodes straight into the job's buffer, after the ones before it.
            let at = job.chunk.len();
            let decoded = decoder
                .decode_unchecked_append(index, entry, frame, &mut job.chunk)
                .and_then(|()| payload::check_chunk(index, entry, &job.chunk[at..]));
            if let Err(e) = decoded {
                failed = Some((index, e));
                break;
            }
        }
        if !report(job, failed, entries, &msgs) {
            return;
        }
    }
}

fn write_in_order<E>(
    msgs: Receiver<Msg>,
    pool: SyncSender<(Vec<u8>, Vec<u8>)>,
    entries: &[ChunkEntry],
    start: u32,
    count: u32,
    sink: &mut ChunkSink<'_, E>,
) -> Result<(), PipelineError<E>> {
    let mut next = start;
    let mut waiting: BTreeMap<u32, Msg> = BTreeMap::new();
    loop {
        let msg = match waiting.remove(&next) {
            Some(m) => m,
            None => {
                let m = msgs.recv().expect("reader reports the end or a failure");
                let index = match &m {
                    Msg::Chunk(j) => j.index,
                    Msg::Failed(i, _) => *i,
                    Msg::End => count,
                };
                if index != next {
                    waiting.insert(index, m);
                    continue;
                }
                m
            }
        };
        match msg {
            Msg::Chunk(job) => {
                sink(job.index, job.entries(entries), &job.chunk).map_err(PipelineError::Sink)?;
                next += job.count;
                let _ = pool.send((job.frame, job.chunk));
            }
            Msg::Failed(_, PipelineErrorNoSink::Payload(e)) => {
                return Err(PipelineError::Payload(e))
            }
            Msg::Failed(_, PipelineErrorNoSink::Read { offset, source }) => {
                return Err(PipelineError::Read { offset, source })
            }
            Msg::End => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_between_two_and_budget_buffer_pairs() {
        assert_eq!(buffer_pairs(1 << 20, 2), 6);
        assert_eq!(buffer_pairs(4 << 20, 2), 3);
        assert_eq!(buffer_pairs(8 << 20, 64), 2);
        assert_eq!(buffer_pairs(4096, 64), 512);
        // Jobs of small chunks: 2 MiB in flight.
        assert_eq!(buffer_pairs(128 << 10, 3), 16);
        assert!(buffer_pairs(1 << 20, 64) * (2 << 20) <= BUFFER_BUDGET);
    }
}
