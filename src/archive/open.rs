//! Opening an archive (from its stored index, or by reading its headers once) and
//! reading its members.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::gzip::{self, Checkpoint, Inflater, SPAN, WINDOW};
use super::index::{Builder, Index, Node, NodeKind};
use super::store::{self, Point, Stored, Windows};
use super::tar::{self, End, TarStream};
use super::zst;
use super::{ArchiveError, BlobBytes};
use crate::oci::Digest;

/// Bounds on what a gzip stream may expand to while it is indexed: at most
/// `max(floor, ratio × compressed size)` bytes. Beyond that it is treated as a bomb.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub ratio: u64,
    pub floor: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ratio: 256,
            floor: 256 << 20,
        }
    }
}

/// Plain-tar headers: when they come close together (the last skip was under
/// `DENSE_GAP`), they are read in batches of `DENSE_BATCH`; when members are larger, each
/// header is read alone, as the rest of the read path's block it lies in, so that member
/// data is not fetched to list the archive. The walk is sequential (a header gives the
/// next one's offset), so each lone header costs a round trip: reading 1 MiB through
/// takes about as long as one request on loopback, and on a slower link a round trip
/// costs more bytes still. Measured (docs/benchmarks.md): 2,000 members of 100 KiB read
/// header by header fetched 31 MiB instead of 200 but took 10.4 s instead of 2.2 s.
const DENSE_GAP: u64 = 1 << 20;
const DENSE_BATCH: u32 = 4 << 20;

/// A listed archive.
pub struct Archive {
    pub digest: Digest,
    pub index: Index,
    gzip: Option<(Vec<Point>, Windows)>,
    zstd: Option<Decoded>,
}

/// Where the members of a tar+zstd archive are read from.
enum Decoded {
    /// The decompressed tar, kept in the cache directory.
    File(File),
    /// The blob itself, decompressed from its start.
    Stream,
}

/// The uncompressed stream of a zstd blob during its first pass, kept in `sink`.
struct ZstStream<'a> {
    blob: &'a dyn BlobBytes,
    cursor: zst::Cursor,
    scratch: Vec<u8>,
    eof: Option<u64>,
    limit: u64,
    sink: zst::Sink,
}

impl Forward for ZstStream<'_> {
    fn position(&self) -> u64 {
        self.cursor.position()
    }

    fn produce(&mut self, n: usize) -> Result<usize, ArchiveError> {
        let got = self.cursor.read(self.blob, &mut self.scratch[..n])?;
        self.sink.write(&self.scratch[..got])?;
        if self.cursor.position() > self.limit {
            return Err(ArchiveError::Hostile(format!(
                "zstd expands past {} bytes ({}-byte blob): a zstd bomb?",
                self.limit,
                self.blob.size()
            )));
        }
        Ok(got)
    }

    fn parts(&mut self) -> (&[u8], &mut Option<u64>) {
        (&self.scratch, &mut self.eof)
    }
}

impl TarStream for ZstStream<'_> {
    fn read_at(&mut self, pos: u64, out: &mut [u8]) -> Result<usize, ArchiveError> {
        read_forward(self, pos, out)
    }
}

/// A decompressed stream during its first pass, read forward only into its scratch buffer.
trait Forward {
    /// Offset in the decompressed stream of the next byte produced.
    fn position(&self) -> u64;
    /// The next bytes into the scratch buffer's first `n`; 0 at the end.
    fn produce(&mut self, n: usize) -> Result<usize, ArchiveError>;
    /// The scratch buffer, and where the stream ended once it has.
    fn parts(&mut self) -> (&[u8], &mut Option<u64>);
}

/// Fill `out` from offset `pos` of a forward-only stream, skipping what lies before it.
fn read_forward(s: &mut dyn Forward, pos: u64, out: &mut [u8]) -> Result<usize, ArchiveError> {
    let mut filled = 0;
    while filled < out.len() && s.parts().1.is_none() {
        let here = s.position();
        let want = pos + filled as u64;
        if here > want {
            return Err(ArchiveError::Read(
                "decompressed stream read backwards".into(),
            ));
        }
        // Skip to `want`, then copy.
        let room = s.parts().0.len();
        let skip = (want - here).min(room as u64) as usize;
        let n = if skip > 0 {
            skip
        } else {
            (out.len() - filled).min(room)
        };
        let got = s.produce(n)?;
        if got == 0 {
            *s.parts().1 = Some(s.position());
            break;
        }
        if skip == 0 {
            out[filled..filled + got].copy_from_slice(&s.parts().0[..got]);
            filled += got;
        }
    }
    Ok(filled)
}

/// Plain tar headers over [`BlobBytes`], batched.
struct PlainStream<'a> {
    blob: &'a dyn BlobBytes,
    buf: Vec<u8>,
    base: u64,
    /// The end of the last range the walk asked for.
    asked_end: Option<u64>,
}

impl TarStream for PlainStream<'_> {
    fn read_at(&mut self, pos: u64, out: &mut [u8]) -> Result<usize, ArchiveError> {
        let end = pos.saturating_add(out.len() as u64).min(self.blob.size());
        if pos >= end {
            return Ok(0);
        }
        let have = pos >= self.base && end <= self.base + self.buf.len() as u64;
        if !have {
            // The member data the walk just skipped predicts the next skips.
            // (Nothing known at the start: one block, which holds several small headers.)
            let dense = self
                .asked_end
                .is_some_and(|e| pos.saturating_sub(e) < DENSE_GAP);
            let block = crate::cache::block::BLOCK_SIZE;
            let batch = if dense {
                DENSE_BATCH
            } else {
                (block - pos % block) as u32
            };
            let want = (out.len() as u32).max(batch);
            self.buf = self.blob.read_at(pos, want)?;
            self.base = pos;
        }
        self.asked_end = Some(end);
        let from = (pos - self.base) as usize;
        let n = ((end - pos) as usize).min(self.buf.len().saturating_sub(from));
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        Ok(n)
    }
}

/// The uncompressed stream of a gzip blob during its first pass, recording checkpoints.
struct GzStream<'a> {
    blob: &'a dyn BlobBytes,
    inflater: Inflater,
    scratch: Vec<u8>,
    /// Where the stream ended, once it has.
    eof: Option<u64>,
    limit: u64,
    points: Vec<Point>,
    windows: WindowSink,
}

/// Where the first pass puts windows: a temporary file, or memory without a cache dir.
enum WindowSink {
    File(File, PathBuf),
    Memory(Vec<Vec<u8>>),
}

impl GzStream<'_> {
    fn record(&mut self, cp: Checkpoint, w: &[u8]) -> Result<(), ArchiveError> {
        self.points.push(Point {
            at: cp,
            window_len: w.len() as u32,
            window_crc: crc32c::crc32c(w),
        });
        match &mut self.windows {
            WindowSink::Memory(v) => v.push(w.to_vec()),
            WindowSink::File(f, path) => {
                let mut slot = w.to_vec();
                slot.resize(WINDOW, 0);
                f.write_all(&slot)
                    .map_err(|e| ArchiveError::Read(format!("writing {}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    /// Produce the next bytes into the scratch buffer's first `n`.
    fn produce(&mut self, n: usize) -> Result<usize, ArchiveError> {
        let Self {
            blob,
            inflater,
            scratch,
            ..
        } = self;
        let mut pending = Vec::new();
        let got = inflater.read(*blob, &mut scratch[..n], &mut |cp, w| {
            pending.push((cp, w.to_vec()));
            Ok(())
        })?;
        for (cp, w) in pending {
            self.record(cp, &w)?;
        }
        if self.inflater.position() > self.limit {
            return Err(ArchiveError::Hostile(format!(
                "gzip expands past {} bytes ({}-byte blob): a gzip bomb?",
                self.limit,
                self.blob.size()
            )));
        }
        Ok(got)
    }
}

impl Forward for GzStream<'_> {
    fn position(&self) -> u64 {
        self.inflater.position()
    }

    fn produce(&mut self, n: usize) -> Result<usize, ArchiveError> {
        GzStream::produce(self, n)
    }

    fn parts(&mut self) -> (&[u8], &mut Option<u64>) {
        (&self.scratch, &mut self.eof)
    }
}

impl TarStream for GzStream<'_> {
    fn read_at(&mut self, pos: u64, out: &mut [u8]) -> Result<usize, ArchiveError> {
        read_forward(self, pos, out)
    }
}

impl Archive {
    /// List an archive: from its stored index in `dir` if there is one, else by reading
    /// its headers (and storing the result in `dir`).
    pub fn open(
        blob: &dyn BlobBytes,
        digest: &Digest,
        dir: Option<&Path>,
        limits: Limits,
    ) -> Result<Self, ArchiveError> {
        if let Some(a) = dir.and_then(|d| Self::from_cache(d, digest, blob.size())) {
            return Ok(a);
        }
        let head = blob.read_at(0, 4)?;
        let mut builder = Builder::new();
        let mut zstd = None;
        let (end, stream_len, gz) = if zst::is_zstd(&head) {
            let (end, len, decoded) =
                Self::first_zstd_pass(blob, digest, dir, limits, &mut builder)?;
            zstd = Some(decoded);
            (end, len, None)
        } else if gzip::is_gzip(&head) {
            let windows = match dir {
                Some(d) => {
                    std::fs::create_dir_all(d)
                        .map_err(|e| ArchiveError::Read(format!("{}: {e}", d.display())))?;
                    let path = crate::cache::temp::beside(&store::win_path(d, digest));
                    let f = File::create(&path)
                        .map_err(|e| ArchiveError::Read(format!("{}: {e}", path.display())))?;
                    WindowSink::File(f, path)
                }
                None => WindowSink::Memory(Vec::new()),
            };
            let mut s = GzStream {
                blob,
                inflater: Inflater::first_pass()?,
                scratch: vec![0; 256 * 1024],
                eof: None,
                limit: limits.floor.max(limits.ratio.saturating_mul(blob.size())),
                points: Vec::new(),
                windows,
            };
            let walked = walk(&mut s, &mut builder);
            let end = match walked {
                Ok(e) => e,
                Err(e) => {
                    if let WindowSink::File(_, p) = &s.windows {
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(e);
                }
            };
            let len = s.eof;
            (end, len, Some((s.points, s.windows)))
        } else {
            let mut s = PlainStream {
                blob,
                buf: Vec::new(),
                base: 0,
                asked_end: None,
            };
            (walk(&mut s, &mut builder)?, Some(blob.size()), None)
        };
        let (refused, count) = builder.refusals();
        for r in refused {
            log::warn!("archive {digest}: entry refused: {r}");
        }
        if count > refused.len() {
            log::warn!(
                "archive {digest}: {} more entries refused",
                count - refused.len()
            );
        }
        let index = builder.finish(stream_len);
        match &end {
            End::Garbage(why) | End::Truncated(why) if index.is_empty() => {
                if let Some((_, WindowSink::File(_, p))) = &gz {
                    let _ = std::fs::remove_file(p);
                }
                if let (Some(Decoded::File(_)), Some(d)) = (&zstd, dir) {
                    let _ = std::fs::remove_file(store::dec_path(d, digest));
                }
                return Err(ArchiveError::NotTar(why.clone()));
            }
            End::Garbage(why) | End::Truncated(why) => {
                log::warn!("archive {digest}: listing stops early: {why}")
            }
            End::Clean => {}
        }
        let (points, sink) = match gz {
            Some((p, w)) => (p, Some(w)),
            None => (Vec::new(), None),
        };
        let stored = Stored {
            gzip: sink.is_some(),
            zstd: zstd.is_some(),
            blob_size: blob.size(),
            index,
            points,
        };
        let windows = match sink {
            None => None,
            Some(WindowSink::Memory(v)) => Some(Windows::Memory(v)),
            Some(WindowSink::File(f, tmp)) => {
                drop(f);
                let saved = dir.map(|d| stored.save(d, digest, Some(&tmp)));
                let path = match saved {
                    Some(Ok(())) => dir.map(|d| store::win_path(d, digest)).unwrap_or(tmp),
                    other => {
                        if let Some(Err(e)) = other {
                            log::warn!("archive {digest}: index not stored: {e}");
                        }
                        tmp
                    }
                };
                let f = File::open(&path)
                    .map_err(|e| ArchiveError::Read(format!("{}: {e}", path.display())))?;
                Some(Windows::File(f))
            }
        };
        let kept = !matches!(zstd, Some(Decoded::Stream));
        if !stored.gzip && kept {
            if let Some(d) = dir {
                if let Err(e) =
                    std::fs::create_dir_all(d).and_then(|_| stored.save(d, digest, None))
                {
                    log::warn!("archive {digest}: index not stored: {e}");
                }
            }
        }
        Ok(Self {
            digest: digest.clone(),
            index: stored.index,
            gzip: windows.map(|w| (stored.points, w)),
            zstd,
        })
    }

    /// The first pass over a tar+zstd blob: list it, and keep the decompressed tar in
    /// `dir` (renamed into place once whole) when there is one.
    fn first_zstd_pass(
        blob: &dyn BlobBytes,
        digest: &Digest,
        dir: Option<&Path>,
        limits: Limits,
        builder: &mut Builder,
    ) -> Result<(End, Option<u64>, Decoded), ArchiveError> {
        let io = |p: &Path, e: std::io::Error| ArchiveError::Read(format!("{}: {e}", p.display()));
        let sink = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
                let path = crate::cache::temp::beside(&store::dec_path(d, digest));
                let f = File::create(&path).map_err(|e| io(&path, e))?;
                zst::Sink::File(f, path)
            }
            None => zst::Sink::Discard,
        };
        let mut s = ZstStream {
            blob,
            cursor: zst::Cursor::new()?,
            scratch: vec![0; 256 * 1024],
            eof: None,
            limit: limits.floor.max(limits.ratio.saturating_mul(blob.size())),
            sink,
        };
        let walked = walk(&mut s, builder);
        let zst::Sink::File(f, tmp) = s.sink else {
            return Ok((walked?, s.eof, Decoded::Stream));
        };
        drop(f);
        let end = match walked {
            Ok(e) => e,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let kept = dir.map(|d| store::dec_path(d, digest)).unwrap_or_default();
        match std::fs::rename(&tmp, &kept).and_then(|()| File::open(&kept)) {
            Ok(f) => Ok((end, s.eof, Decoded::File(f))),
            Err(e) => {
                log::warn!("archive {digest}: decompressed tar not kept ({e})");
                let _ = std::fs::remove_file(&tmp);
                Ok((end, s.eof, Decoded::Stream))
            }
        }
    }

    /// Whether this is a tar+zstd archive.
    pub fn is_zstd(&self) -> bool {
        self.zstd.is_some()
    }

    /// Read members from the blob rather than from a kept decompressed tar (whose file
    /// the cache had no room for, and which the caller removes).
    pub fn unkeep(&mut self) {
        if let Some(d) = self.zstd.as_mut() {
            *d = Decoded::Stream;
        }
    }

    /// An archive listed from its stored index in `dir`, if there is a sound one.
    pub fn from_cache(dir: &Path, digest: &Digest, blob_size: u64) -> Option<Self> {
        let (stored, windows) = Stored::load(dir, digest, blob_size)?;
        let zstd = match stored.zstd {
            true => Some(Decoded::File(
                File::open(store::dec_path(dir, digest)).ok()?,
            )),
            false => None,
        };
        Some(Self {
            digest: digest.clone(),
            index: stored.index,
            gzip: stored.gzip.then_some((stored.points, windows)),
            zstd,
        })
    }

    /// An archive listed from its published index ([`super::remote`]).
    pub fn from_published(digest: &Digest, f: super::remote::Fetched) -> Self {
        let gzip = f.stored.gzip;
        Self {
            digest: digest.clone(),
            index: f.stored.index,
            gzip: gzip.then(|| (f.stored.points, Windows::Remote(f.windows))),
            zstd: f.stored.zstd.then_some(Decoded::Stream),
        }
    }

    /// The member table and, for gzip, the checkpoints with their windows.
    pub fn parts(&self) -> (&Index, Option<(&[Point], &Windows)>) {
        (
            &self.index,
            self.gzip.as_ref().map(|(p, w)| (p.as_slice(), w)),
        )
    }

    /// A reader of one file member; `failures` is the blob's failure count now
    /// ([`BlobBytes::failures`]).
    pub fn reader(&self, id: u32, failures: u64) -> Option<MemberReader> {
        let n = *self.index.node(id)?;
        (n.kind == NodeKind::File).then(|| MemberReader {
            node: n,
            cursor: Mutex::new(None),
            zcursor: Mutex::new(None),
            failures_at_open: failures,
        })
    }

    /// Bytes of a member, unless the blob failed its digest check since the member was
    /// opened (its bytes, and the inflater's buffered input, may be the bad ones).
    pub fn read(
        &self,
        blob: &dyn BlobBytes,
        r: &MemberReader,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, ArchiveError> {
        let failed = || {
            ArchiveError::Read(format!(
                "{} failed its digest check while this member was open",
                self.digest
            ))
        };
        if blob.failures() != r.failures_at_open {
            return Err(failed());
        }
        let out = self.read_member(blob, r, offset, len)?;
        if blob.failures() != r.failures_at_open {
            return Err(failed());
        }
        Ok(out)
    }

    /// Bytes `offset..offset+len` of a member, clamped to its size.
    fn read_member(
        &self,
        blob: &dyn BlobBytes,
        r: &MemberReader,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, ArchiveError> {
        let n = &r.node;
        if n.truncated {
            return Err(ArchiveError::Truncated(format!(
                "member at {} claims {} bytes past the stream's end",
                n.offset, n.size
            )));
        }
        if offset >= n.size || len == 0 {
            return Ok(Vec::new());
        }
        let len = (len as u64).min(n.size - offset);
        let at = n.offset + offset;
        match &self.zstd {
            Some(Decoded::File(f)) => {
                let mut out = vec![0u8; len as usize];
                let got = read_full_at(f, &mut out, at)
                    .map_err(|e| ArchiveError::Read(format!("decompressed tar: {e}")))?;
                if got < out.len() {
                    return Err(ArchiveError::Truncated(format!(
                        "stream ends before {}",
                        at + len
                    )));
                }
                return Ok(out);
            }
            Some(Decoded::Stream) => return zstd_from_stream(blob, r, at, len),
            None => {}
        }
        let Some((points, windows)) = &self.gzip else {
            let out = blob.read_at(at, len as u32)?;
            if (out.len() as u64) < len {
                return Err(ArchiveError::Truncated(format!(
                    "blob ends before {}",
                    at + len
                )));
            }
            return Ok(out);
        };
        let mut cursor = r.cursor.lock().unwrap_or_else(|e| e.into_inner());
        // Go on from where the last read stopped when that is closer than a checkpoint.
        let i = points.partition_point(|p| p.at.out <= at);
        let nearest = i.checked_sub(1).map(|i| (i, points[i]));
        let reuse = cursor.as_ref().is_some_and(|c| {
            c.position() <= at
                && nearest.is_none_or(|(_, p)| at - c.position() <= (at - p.at.out).max(SPAN))
        });
        if !reuse {
            let (i, p) = nearest.ok_or_else(|| ArchiveError::BadIndex("no checkpoint".into()))?;
            let w = windows.get(i, &p)?;
            *cursor = Some(Box::new(Inflater::resume(blob, &p.at, &w)?));
        }
        let inf = cursor
            .as_mut()
            .ok_or_else(|| ArchiveError::BadIndex("no cursor".into()))?;
        let mut scratch = vec![0u8; (len as usize).max(64 * 1024)];
        let mut none = |_: Checkpoint, _: &[u8]| Ok(());
        while inf.position() < at {
            let n = ((at - inf.position()) as usize).min(scratch.len());
            if inf.read(blob, &mut scratch[..n], &mut none)? == 0 {
                return Err(ArchiveError::Truncated("gzip stream ends early".into()));
            }
        }
        let mut out = Vec::with_capacity(len as usize);
        while (out.len() as u64) < len {
            let n = (len as usize - out.len()).min(scratch.len());
            let got = inf.read(blob, &mut scratch[..n], &mut none)?;
            if got == 0 {
                return Err(ArchiveError::Truncated("gzip stream ends early".into()));
            }
            out.extend_from_slice(&scratch[..got]);
        }
        Ok(out)
    }
}

/// One open member: its table entry and, for gzip, where inflating stopped.
pub struct MemberReader {
    pub node: Node,
    cursor: Mutex<Option<Box<Inflater>>>,
    /// tar+zstd read from the blob: where decompressing stopped.
    zcursor: Mutex<Option<Box<zst::Cursor>>>,
    failures_at_open: u64,
}

/// `len` bytes at `at` of a zstd stream, decompressed from its start (or from where
/// this member's last read stopped).
fn zstd_from_stream(
    blob: &dyn BlobBytes,
    r: &MemberReader,
    at: u64,
    len: u64,
) -> Result<Vec<u8>, ArchiveError> {
    let mut cursor = r.zcursor.lock().unwrap_or_else(|e| e.into_inner());
    if cursor.as_ref().is_none_or(|c| c.position() > at) {
        *cursor = Some(Box::new(zst::Cursor::new()?));
    }
    let c = cursor
        .as_mut()
        .ok_or_else(|| ArchiveError::BadIndex("no cursor".into()))?;
    let mut scratch = vec![0u8; (len as usize).clamp(64 * 1024, 1 << 20)];
    let ended = || ArchiveError::Truncated("zstd stream ends early".into());
    while c.position() < at {
        let n = ((at - c.position()) as usize).min(scratch.len());
        if c.read(blob, &mut scratch[..n])? == 0 {
            return Err(ended());
        }
    }
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        let n = (len as usize - out.len()).min(scratch.len());
        let got = c.read(blob, &mut scratch[..n])?;
        if got == 0 {
            return Err(ended());
        }
        out.extend_from_slice(&scratch[..got]);
    }
    Ok(out)
}

/// `pread` until `buf` is full or the file ends; how many bytes were read.
fn read_full_at(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], at + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

fn walk(stream: &mut dyn TarStream, builder: &mut Builder) -> Result<End, ArchiveError> {
    tar::walk(stream, &mut |e| {
        builder.add(e);
        Ok(())
    })
}
