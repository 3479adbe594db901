//! The tar header reader: walks ustar, GNU (`L`/`K` long names, base-256 numbers) and
//! POSIX pax (`x` records) headers and yields one [`RawEntry`] per member, with where its
//! data starts in the (uncompressed) stream. Member data is never read, only skipped.
//!
//! Written here rather than taken from the `tar` crate because the crate reads long-name
//! and pax entries into memory at whatever size their header claims, and cannot report a
//! member's data offset without reading through it; both matter for hostile, remote input.

use super::ArchiveError;

pub const BLOCK: u64 = 512;
/// Largest long-name or pax entry read; larger ones are refused.
pub const MAX_META: u64 = 1 << 20;
/// Most members indexed; an archive with more is refused (bounded memory).
pub const MAX_MEMBERS: usize = 4_000_000;

/// Bytes of a stream at an offset; offsets asked for never decrease.
pub trait TarStream {
    /// Fill `buf` from `pos`; returns how many bytes there were (fewer at the end).
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<usize, ArchiveError>;
}

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    /// Devices, FIFOs, sockets and anything else: left out.
    Other,
}

/// One member as its headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub mtime: i64,
    /// Where the member's data starts in the uncompressed stream.
    pub offset: u64,
    pub size: u64,
}

/// Why reading headers stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The end-of-archive marker (or the stream's end right at a header boundary).
    Clean,
    /// The stream ended inside a header or a member's data (a header's size lied).
    Truncated(String),
    /// A header failed its checksum or could not be parsed.
    Garbage(String),
}

/// Read every header; `emit` gets each member in archive order. An error is returned
/// only for failures of the stream itself (fetch errors, a gzip bomb); hostile headers
/// end the walk with [`End::Truncated`] or [`End::Garbage`].
pub fn walk(
    stream: &mut dyn TarStream,
    emit: &mut dyn FnMut(RawEntry) -> Result<(), ArchiveError>,
) -> Result<End, ArchiveError> {
    let mut pos = 0u64;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut pax = Pax::default();
    let mut global = Pax::default();
    let mut members = 0usize;
    let mut hdr = [0u8; BLOCK as usize];
    loop {
        let n = stream.read_at(pos, &mut hdr)?;
        if n == 0 {
            return Ok(End::Clean);
        }
        if n < hdr.len() {
            return Ok(End::Truncated(format!("header at {pos} is cut short")));
        }
        if hdr.iter().all(|&b| b == 0) {
            return Ok(End::Clean);
        }
        if !checksum_ok(&hdr) {
            return Ok(End::Garbage(format!("header at {pos} fails its checksum")));
        }
        let Some(size) = number(&hdr[124..136]) else {
            return Ok(End::Garbage(format!("header at {pos} has a bad size")));
        };
        let flag = hdr[156];
        let size = if matches!(flag, b'x' | b'g' | b'L' | b'K') {
            size
        } else {
            pax.size.or(global.size).unwrap_or(size)
        };
        let data = pos + BLOCK;
        let Some(next) = size
            .checked_add(BLOCK - 1)
            .map(|s| s / BLOCK * BLOCK)
            .and_then(|s| data.checked_add(s))
        else {
            return Ok(End::Garbage(format!(
                "header at {pos} has a size past 2^64"
            )));
        };
        match flag {
            b'L' | b'K' | b'x' | b'g' => {
                if size > MAX_META {
                    return Ok(End::Garbage(format!(
                        "metadata entry at {pos} claims {size} bytes (limit {MAX_META})"
                    )));
                }
                let mut meta = vec![0u8; size as usize];
                if stream.read_at(data, &mut meta)? < meta.len() {
                    return Ok(End::Truncated(format!(
                        "metadata entry at {pos} is cut short"
                    )));
                }
                match flag {
                    b'L' => long_name = Some(c_string(&meta).to_vec()),
                    b'K' => long_link = Some(c_string(&meta).to_vec()),
                    b'x' => pax.parse(&meta),
                    _ => global.parse(&meta),
                }
            }
            _ => {
                members += 1;
                if members > MAX_MEMBERS {
                    return Err(ArchiveError::Hostile(format!(
                        "more than {MAX_MEMBERS} members"
                    )));
                }
                let path = pax
                    .path
                    .take()
                    .or_else(|| long_name.take())
                    .unwrap_or_else(|| ustar_name(&hdr));
                let link = pax
                    .link
                    .take()
                    .or_else(|| long_link.take())
                    .unwrap_or_else(|| c_string(&hdr[157..257]).to_vec());
                let kind = match flag {
                    b'0' | 0 | b'7' => Kind::File,
                    b'5' => Kind::Dir,
                    b'2' => Kind::Symlink,
                    b'1' => Kind::HardLink,
                    _ => Kind::Other,
                };
                // Old tars mark directories only by a trailing slash.
                let kind = if kind == Kind::File && path.ends_with(b"/") {
                    Kind::Dir
                } else {
                    kind
                };
                let mtime = pax
                    .mtime
                    .or(global.mtime)
                    .or_else(|| number(&hdr[136..148]).map(|m| m.min(i64::MAX as u64) as i64))
                    .unwrap_or(0);
                let mode = number(&hdr[100..108]).unwrap_or(0o644) as u32 & 0o7777;
                let size = if matches!(kind, Kind::File) { size } else { 0 };
                let hard_size_skip = matches!(flag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6');
                pax = Pax::default();
                emit(RawEntry {
                    path,
                    link,
                    kind,
                    mode,
                    mtime,
                    offset: data,
                    size,
                })?;
                // Links, directories and devices carry no data, whatever their size says.
                if hard_size_skip {
                    pos = data;
                    continue;
                }
            }
        }
        pos = next;
    }
}

/// Whether the header's checksum matches (unsigned, or the signed sum old tars wrote).
fn checksum_ok(h: &[u8; BLOCK as usize]) -> bool {
    let Some(want) = number(&h[148..156]) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    want == unsigned || want as i64 == signed
}

/// A numeric field: octal text (NUL- or space-terminated), or GNU base-256.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| b != b' ' && b != 0)
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

fn c_string(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

/// `prefix/name` of a ustar header.
fn ustar_name(h: &[u8; BLOCK as usize]) -> Vec<u8> {
    let name = c_string(&h[0..100]);
    let ustar = &h[257..262] == b"ustar";
    let prefix = if ustar { c_string(&h[345..500]) } else { &[] };
    if prefix.is_empty() {
        name.to_vec()
    } else {
        let mut p = prefix.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// The pax records orasfs uses.
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<i64>,
}

impl Pax {
    /// Parse `LEN KEY=VALUE\n` records; malformed records end parsing.
    fn parse(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let Some(sp) = data.iter().position(|&b| b == b' ') else {
                return;
            };
            let Some(len) = std::str::from_utf8(&data[..sp])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            else {
                return;
            };
            if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
                return;
            }
            let record = &data[sp + 1..len - 1];
            data = &data[len..];
            let Some(eq) = record.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            let text = || std::str::from_utf8(value).ok();
            match key {
                b"path" => self.path = Some(value.to_vec()),
                b"linkpath" => self.link = Some(value.to_vec()),
                b"size" => self.size = text().and_then(|s| s.parse().ok()),
                b"mtime" => {
                    self.mtime = text()
                        .and_then(|s| s.split('.').next())
                        .and_then(|s| s.parse().ok())
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl TarStream for Mem {
        fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<usize, ArchiveError> {
            let start = (pos as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - start);
            buf[..n].copy_from_slice(&self.0[start..start + n]);
            Ok(n)
        }
    }

    fn header(name: &str, flag: u8, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"14000000000");
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn entries(bytes: Vec<u8>) -> (Vec<RawEntry>, End) {
        let mut out = Vec::new();
        let end = walk(&mut Mem(bytes), &mut |e| {
            out.push(e);
            Ok(())
        })
        .unwrap();
        (out, end)
    }

    #[test]
    fn reads_members_and_long_names() {
        let long = "d/".repeat(80) + "f";
        let mut t = header("././@LongLink", b'L', long.len() as u64 + 1);
        let mut name = long.clone().into_bytes();
        name.push(0);
        name.resize(512, 0);
        t.extend(name);
        t.extend(header("short", b'0', 3));
        t.extend(b"abc".iter().copied().chain(std::iter::repeat_n(0, 509)));
        t.extend(header("x", b'0', 0));
        t.extend(vec![0; 1024]);
        let (e, end) = entries(t);
        assert_eq!(end, End::Clean);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].path, long.as_bytes());
        assert_eq!((e[0].offset, e[0].size), (1536, 3));
        assert_eq!(e[0].mtime, 0o14000000000);
    }

    #[test]
    fn a_lying_size_ends_the_walk_as_truncated_and_garbage_stops() {
        let mut t = header("big", b'0', 1 << 30);
        t.extend(vec![1; 512]);
        let (e, end) = entries(t);
        assert_eq!(e.len(), 1);
        assert_eq!(
            end,
            End::Clean,
            "the stream ends right after: nothing more to list"
        );
        let mut bad = header("a", b'0', 0);
        bad[0] = b'b';
        let (e, end) = entries(bad);
        assert!(e.is_empty());
        assert!(matches!(end, End::Garbage(_)));
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"  12 \0"), Some(0o12));
        assert_eq!(number(&[0x80, 0, 0, 1, 0]), Some(256));
        assert_eq!(number(b"9"), None);
    }
}
