//! gzip with checkpoints, as zlib's `zran` example does: while a stream is inflated once
//! from the start, every [`SPAN`] bytes of output (at a deflate block boundary) the
//! compressed offset, the unused bits of the last input byte and the last 32 KiB of output
//! are recorded. Inflating can later start at any checkpoint instead of the stream's start.
//!
//! zlib is called directly (through `libz-sys`) because restarting mid-stream needs
//! `inflatePrime`, `inflateSetDictionary` and `Z_BLOCK`, which `flate2` does not expose.
//! Concatenated gzip members are followed; bytes after the last member that do not start
//! another member are ignored, as `gzip -d` does with trailing zeros.

use std::os::raw::{c_int, c_uint, c_void};

use libz_sys as z;

use super::{ArchiveError, BlobBytes};

/// Output between checkpoints.
pub const SPAN: u64 = 1 << 20;
/// The deflate window a checkpoint carries.
pub const WINDOW: usize = 32 * 1024;
/// Compressed bytes asked for at a time: from a checkpoint (a short span is wanted), and
/// in the first pass (which reads the whole blob, so large requests are cheaper).
const INPUT_CHUNK: u32 = 256 * 1024;
const FIRST_PASS_CHUNK: u32 = 4 << 20;

/// Where inflating can start again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the uncompressed stream.
    pub out: u64,
    /// Offset of the first whole compressed byte.
    pub input: u64,
    /// Bits of the byte before `input` still to be used (0–7).
    pub bits: u8,
}

/// Receives each checkpoint of the first pass with its window.
pub type OnCheckpoint<'a> = dyn FnMut(Checkpoint, &[u8]) -> Result<(), ArchiveError> + 'a;

/// Whether these are the first bytes of a gzip member.
pub fn is_gzip(head: &[u8]) -> bool {
    head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
}

unsafe extern "C" fn zalloc(_: *mut c_void, items: c_uint, size: c_uint) -> *mut c_void {
    libc::calloc(items as usize, size as usize)
}

unsafe extern "C" fn zfree(_: *mut c_void, p: *mut c_void) {
    libc::free(p)
}

/// A zlib inflate stream. Boxed, because zlib's state points back at it.
struct Stream(Box<z::z_stream>);

impl Stream {
    fn new(window_bits: c_int) -> Result<Self, ArchiveError> {
        let mut s = Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        });
        // SAFETY: `s` is a fully initialised z_stream that stays at one address (boxed)
        // until `inflateEnd` in Drop.
        let rc = unsafe {
            z::inflateInit2_(
                &mut *s,
                window_bits,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        if rc != z::Z_OK {
            return Err(ArchiveError::Zlib(format!("inflateInit2 failed ({rc})")));
        }
        Ok(Self(s))
    }

    /// One call of `inflate` on `input` into `out`: (return code, consumed, produced).
    fn inflate(&mut self, input: &[u8], out: &mut [u8], flush: c_int) -> (c_int, usize, usize) {
        let s = &mut *self.0;
        s.next_in = input.as_ptr() as *mut u8;
        s.avail_in = input.len().min(c_uint::MAX as usize) as c_uint;
        s.next_out = out.as_mut_ptr();
        s.avail_out = out.len().min(c_uint::MAX as usize) as c_uint;
        let (in0, out0) = (s.avail_in, s.avail_out);
        // SAFETY: next_in/next_out point into live slices of at least avail_in/avail_out
        // bytes; zlib reads and writes only within them.
        let rc = unsafe { z::inflate(s, flush) };
        let consumed = (in0 - s.avail_in) as usize;
        let produced = (out0 - s.avail_out) as usize;
        s.next_in = std::ptr::null_mut();
        s.next_out = std::ptr::null_mut();
        s.avail_in = 0;
        (rc, consumed, produced)
    }

    fn reset(&mut self, window_bits: c_int) -> Result<(), ArchiveError> {
        // SAFETY: the stream was initialised by inflateInit2.
        match unsafe { z::inflateReset2(&mut *self.0, window_bits) } {
            z::Z_OK => Ok(()),
            rc => Err(ArchiveError::Zlib(format!("inflateReset2 failed ({rc})"))),
        }
    }

    fn data_type(&self) -> c_int {
        self.0.data_type
    }

    fn message(&self) -> String {
        if self.0.msg.is_null() {
            return "corrupt deflate data".into();
        }
        // SAFETY: zlib sets msg to a static NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(self.0.msg) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by inflateInit2 and is ended once.
        unsafe {
            z::inflateEnd(&mut *self.0);
        }
    }
}

// SAFETY: the stream owns its zlib state exclusively and holds no pointers into other
// memory between calls (next_in/next_out are cleared after each inflate).
unsafe impl Send for Stream {}

/// Compressed input read from a blob in pieces.
struct Input {
    buf: Vec<u8>,
    pos: usize,
    chunk: u32,
    /// Blob offset of `buf[0]`.
    base: u64,
}

impl Input {
    fn at(offset: u64, chunk: u32) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            chunk,
            base: offset,
        }
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Make sure at least `want` bytes are buffered if the blob has them; false at EOF.
    fn fill(&mut self, blob: &dyn BlobBytes, want: usize) -> Result<bool, ArchiveError> {
        while self.buf.len() - self.pos < want {
            let next = self.base + self.buf.len() as u64;
            if next >= blob.size() {
                return Ok(self.buf.len() > self.pos);
            }
            let more = blob.read_at(next, self.chunk)?;
            if more.is_empty() {
                return Err(ArchiveError::Truncated(format!(
                    "blob ended at {next} of {}",
                    blob.size()
                )));
            }
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
            self.buf.extend_from_slice(&more);
        }
        Ok(true)
    }

    fn skip(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

/// zlib window bits: raw deflate, and gzip with its header and trailer.
const RAW: c_int = -15;
const GZIP: c_int = 31;

/// Inflates a gzip blob forward from its start or from a checkpoint.
pub struct Inflater {
    stream: Stream,
    input: Input,
    /// Offset in the uncompressed stream of the next byte produced.
    out: u64,
    /// Started from a checkpoint and the first member's trailer is not consumed yet.
    raw: bool,
    /// Whether to stop at block boundaries and record checkpoints.
    indexing: Option<Recorder>,
    done: bool,
}

/// Checkpoint bookkeeping of the first pass.
struct Recorder {
    last: Option<u64>,
    /// The last WINDOW bytes of output, as a ring.
    ring: Vec<u8>,
    ring_pos: usize,
    ring_full: bool,
}

impl Recorder {
    fn push(&mut self, mut bytes: &[u8]) {
        if bytes.len() >= WINDOW {
            bytes = &bytes[bytes.len() - WINDOW..];
            self.ring.copy_from_slice(bytes);
            self.ring_pos = 0;
            self.ring_full = true;
            return;
        }
        let first = (WINDOW - self.ring_pos).min(bytes.len());
        self.ring[self.ring_pos..self.ring_pos + first].copy_from_slice(&bytes[..first]);
        let rest = &bytes[first..];
        self.ring[..rest.len()].copy_from_slice(rest);
        if self.ring_pos + bytes.len() >= WINDOW {
            self.ring_full = true;
        }
        self.ring_pos = (self.ring_pos + bytes.len()) % WINDOW;
    }

    fn window(&self) -> Vec<u8> {
        if self.ring_full {
            let mut w = self.ring[self.ring_pos..].to_vec();
            w.extend_from_slice(&self.ring[..self.ring_pos]);
            w
        } else {
            self.ring[..self.ring_pos].to_vec()
        }
    }
}

impl Inflater {
    /// Inflate from the blob's first byte, recording checkpoints.
    pub fn first_pass() -> Result<Self, ArchiveError> {
        Ok(Self {
            stream: Stream::new(GZIP)?,
            input: Input::at(0, FIRST_PASS_CHUNK),
            out: 0,
            raw: false,
            indexing: Some(Recorder {
                last: None,
                ring: vec![0; WINDOW],
                ring_pos: 0,
                ring_full: false,
            }),
            done: false,
        })
    }

    /// Inflate from a checkpoint, with the window saved there.
    pub fn resume(
        blob: &dyn BlobBytes,
        at: &Checkpoint,
        window: &[u8],
    ) -> Result<Self, ArchiveError> {
        let mut stream = Stream::new(RAW)?;
        let mut input = Input::at(at.input, INPUT_CHUNK);
        if at.bits > 0 {
            if at.bits > 7 || at.input == 0 {
                return Err(ArchiveError::BadIndex(
                    "checkpoint bits out of range".into(),
                ));
            }
            let b = blob.read_at(at.input - 1, 1)?;
            let byte = *b
                .first()
                .ok_or_else(|| ArchiveError::Truncated(format!("no byte at {}", at.input - 1)))?;
            // SAFETY: the stream is initialised; inflatePrime only updates its bit buffer.
            let rc = unsafe {
                z::inflatePrime(
                    &mut *stream.0,
                    at.bits as c_int,
                    (byte >> (8 - at.bits)) as c_int,
                )
            };
            if rc != z::Z_OK {
                return Err(ArchiveError::Zlib(format!("inflatePrime failed ({rc})")));
            }
        }
        if !window.is_empty() {
            // SAFETY: `window` is a live slice of window.len() bytes.
            let rc = unsafe {
                z::inflateSetDictionary(&mut *stream.0, window.as_ptr(), window.len() as c_uint)
            };
            if rc != z::Z_OK {
                return Err(ArchiveError::Zlib(format!(
                    "inflateSetDictionary failed ({rc})"
                )));
            }
        }
        input.pos = 0;
        Ok(Self {
            stream,
            input,
            out: at.out,
            raw: true,
            indexing: None,
            done: false,
        })
    }

    /// Offset in the uncompressed stream of the next byte [`Self::read`] returns.
    pub fn position(&self) -> u64 {
        self.out
    }

    /// Produce the next bytes into `out`; 0 at the end of the last member. In the first
    /// pass, `point` receives each checkpoint with its window.
    pub fn read(
        &mut self,
        blob: &dyn BlobBytes,
        out: &mut [u8],
        point: &mut OnCheckpoint<'_>,
    ) -> Result<usize, ArchiveError> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut stalls = 0;
        while !self.done {
            if self.input.rest().is_empty() && !self.input.fill(blob, 1)? {
                return Err(ArchiveError::Truncated(
                    "gzip stream ends before its last block".into(),
                ));
            }
            let flush = if self.indexing.is_some() {
                z::Z_BLOCK
            } else {
                z::Z_NO_FLUSH
            };
            let (rc, consumed, produced) = self.stream.inflate(self.input.rest(), out, flush);
            self.input.skip(consumed);
            self.out += produced as u64;
            match rc {
                z::Z_OK | z::Z_BUF_ERROR | z::Z_STREAM_END => {}
                z::Z_NEED_DICT => {
                    return Err(ArchiveError::Zlib("stream asks for a dictionary".into()))
                }
                _ => {
                    return Err(ArchiveError::Zlib(format!(
                        "{} at compressed offset {}",
                        self.stream.message(),
                        self.input.offset()
                    )))
                }
            }
            if let Some(rec) = self.indexing.as_mut() {
                rec.push(&out[..produced]);
                let dt = self.stream.data_type();
                let due = match rec.last {
                    None => true,
                    Some(l) => self.out - l >= SPAN,
                };
                if rc != z::Z_STREAM_END && dt & 128 != 0 && dt & 64 == 0 && due {
                    rec.last = Some(self.out);
                    let cp = Checkpoint {
                        out: self.out,
                        input: self.input.offset(),
                        bits: (dt & 7) as u8,
                    };
                    point(cp, &rec.window())?;
                }
            }
            if rc == z::Z_STREAM_END {
                self.next_member(blob)?;
            }
            if produced > 0 {
                return Ok(produced);
            }
            if consumed == 0 && rc != z::Z_STREAM_END {
                stalls += 1;
                if stalls > 2 {
                    return Err(ArchiveError::Zlib(format!(
                        "inflate makes no progress at compressed offset {}",
                        self.input.offset()
                    )));
                }
            } else {
                stalls = 0;
            }
        }
        Ok(0)
    }

    /// After a member's end: go on with the next member, or finish.
    fn next_member(&mut self, blob: &dyn BlobBytes) -> Result<(), ArchiveError> {
        if self.raw {
            // Raw inflate stops before the gzip trailer (CRC32 and size).
            self.input.fill(blob, 8)?;
            self.input.skip(8);
            self.raw = false;
        }
        if self.input.fill(blob, 2)? && is_gzip(self.input.rest()) {
            self.stream.reset(GZIP)
        } else {
            self.done = true;
            Ok(())
        }
    }
}
