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

/// Plain-tar header reads are batched into reads of this size; when headers come close
/// together (small members), into reads of `DENSE_BATCH`, since nearly every byte is
/// fetched anyway and fewer, larger requests list faster.
const HEADER_BATCH: u32 = 64 * 1024;
const DENSE_BATCH: u32 = 4 << 20;

/// A listed archive.
pub struct Archive {
    pub digest: Digest,
    pub index: Index,
    gzip: Option<(Vec<Point>, Windows)>,
}

/// Plain tar headers over [`BlobBytes`], batched.
struct PlainStream<'a> {
    blob: &'a dyn BlobBytes,
    buf: Vec<u8>,
    base: u64,
}

impl TarStream for PlainStream<'_> {
    fn read_at(&mut self, pos: u64, out: &mut [u8]) -> Result<usize, ArchiveError> {
        let end = pos.saturating_add(out.len() as u64).min(self.blob.size());
        if pos >= end {
            return Ok(0);
        }
        let have = pos >= self.base && end <= self.base + self.buf.len() as u64;
        if !have {
            let dense = pos >= self.base && pos - self.base < DENSE_BATCH as u64 / 2;
            let batch = if dense { DENSE_BATCH } else { HEADER_BATCH };
            let want = (out.len() as u32).max(batch);
            self.buf = self.blob.read_at(pos, want)?;
            self.base = pos;
        }
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

impl TarStream for GzStream<'_> {
    fn read_at(&mut self, pos: u64, out: &mut [u8]) -> Result<usize, ArchiveError> {
        let mut filled = 0;
        while filled < out.len() {
            let here = self.inflater.position();
            if self.eof.is_some() {
                break;
            }
            let want = pos + filled as u64;
            if here > want {
                return Err(ArchiveError::Read("gzip stream read backwards".into()));
            }
            // Skip to `want`, then copy.
            let skip = (want - here).min(self.scratch.len() as u64) as usize;
            let n = if skip > 0 {
                skip
            } else {
                (out.len() - filled).min(self.scratch.len())
            };
            let got = self.produce(n)?;
            if got == 0 {
                self.eof = Some(self.inflater.position());
                break;
            }
            if skip == 0 {
                out[filled..filled + got].copy_from_slice(&self.scratch[..got]);
                filled += got;
            }
        }
        Ok(filled)
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
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(ArchiveError::Unsupported);
        }
        let mut builder = Builder::new();
        let (end, stream_len, gz) = if gzip::is_gzip(&head) {
            let windows = match dir {
                Some(d) => {
                    std::fs::create_dir_all(d)
                        .map_err(|e| ArchiveError::Read(format!("{}: {e}", d.display())))?;
                    let path = store::temp_beside(&store::win_path(d, digest));
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
            End::Garbage(why) if index.is_empty() => {
                if let Some((_, WindowSink::File(_, p))) = &gz {
                    let _ = std::fs::remove_file(p);
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
        if !stored.gzip {
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
        })
    }

    /// An archive listed from its stored index in `dir`, if there is a sound one.
    pub fn from_cache(dir: &Path, digest: &Digest, blob_size: u64) -> Option<Self> {
        let (stored, windows) = Stored::load(dir, digest, blob_size)?;
        Some(Self {
            digest: digest.clone(),
            index: stored.index,
            gzip: stored.gzip.then_some((stored.points, windows)),
        })
    }

    /// An archive listed from its published index ([`super::remote`]).
    pub fn from_published(digest: &Digest, f: super::remote::Fetched) -> Self {
        let gzip = f.stored.gzip;
        Self {
            digest: digest.clone(),
            index: f.stored.index,
            gzip: gzip.then(|| (f.stored.points, Windows::Remote(f.windows))),
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
            *cursor = Some(Inflater::resume(blob, &p.at, &w)?);
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
    cursor: Mutex<Option<Inflater>>,
    failures_at_open: u64,
}

fn walk(stream: &mut dyn TarStream, builder: &mut Builder) -> Result<End, ArchiveError> {
    tar::walk(stream, &mut |e| {
        builder.add(e);
        Ok(())
    })
}
