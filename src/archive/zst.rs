//! tar+zstd: the whole stream is decompressed once, front to back, when the archive is
//! first listed, and the decompressed tar is kept in the cache directory beside the
//! member table; a member is then a range of that file. zstd has no equivalent of zlib's
//! `inflatePrime`/`inflateSetDictionary` to restart inside a frame, and container and
//! ORAS tooling write one frame per layer, so checkpoints would only help the rare
//! multi-frame (seekable) stream. Without room in the cache (or without a cache), a member
//! is read by decompressing from the stream's start, going on from where the same open
//! file stopped.
//!
//! Memory is bounded by the decoder's window, capped at 2^27 bytes (128 MiB, zstd's own
//! default limit); a frame asking for more is refused.

use std::io::Write;

use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::{ArchiveError, BlobBytes};

/// Compressed bytes asked for at a time.
const CHUNK: u32 = 1 << 20;
/// The largest decoder window accepted (log2).
const WINDOW_LOG_MAX: u32 = 27;

/// Whether these are the first bytes of a zstd frame.
pub fn is_zstd(head: &[u8]) -> bool {
    head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

/// Decompresses a zstd blob forward from its start.
pub struct Cursor {
    dec: Decoder<'static>,
    buf: Vec<u8>,
    pos: usize,
    /// Blob offset of the next compressed byte to fetch.
    next_in: u64,
    /// Offset in the decompressed stream of the next byte produced.
    out: u64,
    /// The last frame was finished (0 from the decoder) and nothing followed yet.
    at_frame_end: bool,
    done: bool,
}

fn zerr(e: std::io::Error) -> ArchiveError {
    ArchiveError::Zstd(e.to_string())
}

impl Cursor {
    pub fn new() -> Result<Self, ArchiveError> {
        let mut dec = Decoder::new().map_err(zerr)?;
        dec.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
            .map_err(zerr)?;
        Ok(Self {
            dec,
            buf: Vec::new(),
            pos: 0,
            next_in: 0,
            out: 0,
            at_frame_end: true,
            done: false,
        })
    }

    /// Offset in the decompressed stream of the next byte [`Self::read`] returns.
    pub fn position(&self) -> u64 {
        self.out
    }

    /// The next decompressed bytes into `out`; 0 at the end of the stream.
    pub fn read(&mut self, blob: &dyn BlobBytes, out: &mut [u8]) -> Result<usize, ArchiveError> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut stalls = 0;
        while !self.done {
            if self.pos == self.buf.len() {
                if self.next_in >= blob.size() {
                    if !self.at_frame_end {
                        return Err(ArchiveError::Truncated(
                            "zstd stream ends inside a frame".into(),
                        ));
                    }
                    self.done = true;
                    break;
                }
                self.buf = blob.read_at(self.next_in, CHUNK)?;
                self.pos = 0;
                if self.buf.is_empty() {
                    return Err(ArchiveError::Truncated(format!(
                        "blob ended at {} of {}",
                        self.next_in,
                        blob.size()
                    )));
                }
                self.next_in += self.buf.len() as u64;
            }
            let mut input = InBuffer::around(&self.buf[self.pos..]);
            let mut output = OutBuffer::around(&mut *out);
            let hint = self.dec.run(&mut input, &mut output).map_err(zerr)?;
            let (consumed, produced) = (input.pos(), output.pos());
            self.pos += consumed;
            self.out += produced as u64;
            self.at_frame_end = hint == 0;
            if produced > 0 {
                return Ok(produced);
            }
            if consumed == 0 {
                stalls += 1;
                if stalls > 2 {
                    return Err(ArchiveError::Zstd(format!(
                        "the decoder makes no progress at compressed offset {}",
                        self.next_in - (self.buf.len() - self.pos) as u64
                    )));
                }
            } else {
                stalls = 0;
            }
        }
        Ok(0)
    }
}

/// Where the first pass puts the decompressed stream.
pub enum Sink {
    File(std::fs::File, std::path::PathBuf),
    Discard,
}

impl Sink {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        match self {
            Sink::File(f, path) => f
                .write_all(bytes)
                .map_err(|e| ArchiveError::Read(format!("writing {}: {e}", path.display()))),
            Sink::Discard => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl BlobBytes for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ArchiveError> {
            let s = (offset as usize).min(self.0.len());
            let e = (s + len as usize).min(self.0.len());
            Ok(self.0[s..e].to_vec())
        }
    }

    fn all(blob: &Mem) -> Result<Vec<u8>, ArchiveError> {
        let mut c = Cursor::new()?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 7000];
        loop {
            let n = c.read(blob, &mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn frames_are_followed_and_a_cut_stream_is_refused() {
        let a: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"second frame".to_vec();
        let mut z = zstd::encode_all(&a[..], 3).unwrap();
        z.extend(zstd::encode_all(&b[..], 3).unwrap());
        let mut want = a.clone();
        want.extend_from_slice(&b);
        assert!(is_zstd(&z));
        assert_eq!(all(&Mem(z.clone())).unwrap(), want);
        let cut = Mem(z[..z.len() - 5].to_vec());
        assert!(matches!(all(&cut), Err(ArchiveError::Truncated(_))));
        // The second frame's magic damaged: not a frame.
        let mut bad = z.clone();
        let second = z.len() - zstd::encode_all(&b[..], 3).unwrap().len();
        bad[second] ^= 0xff;
        assert!(matches!(all(&Mem(bad)), Err(ArchiveError::Zstd(_))));
    }
}
