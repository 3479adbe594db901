//! The checks behind every fuzz target, shared with the regression tests in
//! `tests/fuzz_regressions.rs` (which include this file by path): each takes untrusted
//! bytes, must not panic except on a broken invariant, and asserts what the rest of
//! orasfs relies on.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use orasfs::app::target::{self, Target};
use orasfs::names::{self, MAX_COMPONENT, RESERVED};
use orasfs::oci::{
    self, Descriptor, Digest, Manifest, ANNOTATION_TITLE, MAX_BLOB_SIZE, MAX_ENTRIES,
    MAX_METADATA_SIZE,
};
use orasfs::source::registry::headers::{
    parse_challenge, parse_content_range, parse_link_next, parse_retry_after, Challenge,
};
use orasfs::source::{valid_repo_name, valid_tag, Reference};
const TYPES: [Option<&str>; 7] = [
    None,
    Some(oci::OCI_MANIFEST),
    Some(oci::OCI_INDEX),
    Some(oci::DOCKER_MANIFEST),
    Some(oci::DOCKER_LIST),
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
];

pub fn manifest(data: &[u8]) {
    let (ct, doc) = match data.split_first() {
        Some((b, rest)) => (TYPES[*b as usize % TYPES.len()], rest),
        None => (None, data),
    };
    let Ok(m) = Manifest::parse(doc, ct) else {
        return;
    };
    assert!(doc.len() as u64 <= MAX_METADATA_SIZE);
    let _ = m.media_type();
    let _ = m.annotations();
    match &m {
        Manifest::Image(img) => {
            assert!(img.layers.len() <= MAX_ENTRIES);
            assert!(img.config.size <= MAX_BLOB_SIZE);
            assert!(img.layers.iter().all(|l| l.size <= MAX_BLOB_SIZE));
            let placed = names::place_layers(&img.layers);
            assert_eq!(placed.len(), img.layers.len(), "every layer is placed");
        }
        Manifest::Index(idx) => {
            assert!(idx.manifests.len() <= MAX_ENTRIES);
            let n = names::index_entry_names(&idx.manifests);
            assert_eq!(n.len(), idx.manifests.len());
            let unique: std::collections::HashSet<_> = n.iter().collect();
            assert_eq!(unique.len(), n.len(), "index entry names are unique");
            for name in &n {
                assert!(!name.contains('/') && name != "." && name != ".." && !name.is_empty());
            }
        }
    }
    // Every digest that parsed is 64 lowercase hex, safe as a file name.
    let check = |d: &oci::Digest| {
        assert_eq!(d.hex().len(), 64);
        assert!(d
            .hex()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(oci::Digest::parse(&d.to_string()).as_ref(), Ok(d));
    };
    match &m {
        Manifest::Image(img) => {
            check(&img.config.digest);
            img.layers.iter().for_each(|l| check(&l.digest));
        }
        Manifest::Index(idx) => idx.manifests.iter().for_each(|l| check(&l.digest)),
    }
}
fn sound_component(c: &str) -> bool {
    !c.is_empty()
        && c != "."
        && c != ".."
        && !c.contains('/')
        && !c.chars().any(char::is_control)
        && c.len() <= MAX_COMPONENT
}

pub fn titles(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(parts) = names::title_components(&text) {
        assert!(!parts.is_empty());
        assert!(parts.iter().all(|p| sound_component(p)), "{parts:?}");
        assert_eq!(parts.join("/"), text, "components rebuild the title");
        assert!(!RESERVED.contains(&parts[0].as_str()));
    }
    // Layers: each line a title ("\u{1}" = no title); the first byte of a line picks one
    // of a few digests, so digests repeat.
    let layers: Vec<Descriptor> = text
        .split('\n')
        .take(64)
        .map(|line| {
            let mut annotations = BTreeMap::new();
            if line != "\u{1}" {
                annotations.insert(ANNOTATION_TITLE.to_string(), line.to_string());
            }
            let pick = line.bytes().next().unwrap_or(0) % 4;
            Descriptor {
                media_type: String::new(),
                digest: Digest::of(&[pick]),
                size: 1,
                annotations,
                platform: None,
                artifact_type: None,
            }
        })
        .collect();
    let placed = names::place_layers(&layers);
    assert_eq!(placed.len(), layers.len(), "every layer is placed");
    let mut files = HashSet::new();
    for p in &placed {
        assert!(p.path.iter().all(|c| sound_component(c)), "{:?}", p.path);
        assert!(!RESERVED.contains(&p.path[0].as_str()), "{:?}", p.path);
        assert!(files.insert(p.path.clone()), "two layers at {:?}", p.path);
    }
    // No file is also a directory on another file's path.
    for p in &placed {
        for k in 1..p.path.len() {
            assert!(!files.contains(&p.path[..k]), "{:?} under a file", p.path);
        }
    }
}

pub fn www_authenticate(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse_challenge(s) {
        Some(Challenge::Bearer { .. }) => {
            assert!(s.trim_start().to_ascii_lowercase().starts_with("bearer"));
        }
        Some(Challenge::Basic { .. }) => {
            assert!(s.trim_start().to_ascii_lowercase().starts_with("basic"));
        }
        None => {}
    }
}

pub fn link(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(target) = parse_link_next(s) {
        assert!(!target.contains('>'), "{target:?}");
        assert!(s.contains(&format!("<{target}>")));
    }
}

pub fn content_range(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(cr) = parse_content_range(s) {
        assert!(cr.start <= cr.end_inclusive);
        if let Some(t) = cr.total {
            assert!(cr.end_inclusive < t);
        }
    }
    if let Some(d) = parse_retry_after(s) {
        assert!(d <= Duration::from_secs(300));
    }
}

pub fn target(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match target::parse(s) {
        Err(e) => assert!(!e.contains('\n'), "{e:?}"),
        Ok(Target::Layout { tag, .. }) => {
            if let Some(t) = tag {
                assert!(valid_tag(&t), "{t:?}");
            }
        }
        Ok(Target::Registry {
            registry,
            repo,
            reference,
        }) => {
            assert!(
                !registry.is_empty() && !registry.contains('/'),
                "{registry:?}"
            );
            if let Some(r) = repo {
                assert!(valid_repo_name(&r), "{r:?}");
            }
            if let Some(Reference::Tag(t)) = reference {
                assert!(valid_tag(&t), "{t:?}");
            }
        }
    }
}

/// A fuzz input as a blob.
struct FuzzBlob<'a>(&'a [u8]);

impl orasfs::archive::BlobBytes for FuzzBlob<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, orasfs::archive::ArchiveError> {
        let s = (offset as usize).min(self.0.len());
        let e = s.saturating_add(len as usize).min(self.0.len());
        Ok(self.0[s..e].to_vec())
    }
}

/// Archive index reader: any bytes as a tar or tar.gz blob list without panicking, under
/// bounded expansion; every listed name is one sound component found again by lookup;
/// every file member reads back at most its size; the stored form round-trips; and any
/// bytes given as a stored index are refused or accepted without panicking.
pub fn archive(data: &[u8]) {
    use orasfs::archive::index::NodeKind;
    use orasfs::archive::open::{Archive, Limits};
    use orasfs::archive::store::Stored;
    let _ = Stored::decode(data);
    let blob = FuzzBlob(data);
    let limits = Limits {
        ratio: 64,
        floor: 4 << 20,
    };
    let Ok(a) = Archive::open(&blob, &Digest::of(data), None, limits) else {
        return;
    };
    let idx = &a.index;
    let mut read = 0u64;
    for id in 1..idx.len() as u32 {
        let n = idx.node(id).expect("node in range");
        let name = idx.name(id);
        assert!(
            !name.is_empty()
                && name != "."
                && name != ".."
                && !name.contains('/')
                && !name.chars().any(char::is_control),
            "unsound member name {name:?}"
        );
        assert_eq!(
            idx.lookup(n.parent, name),
            Some(id),
            "{name:?} not found again"
        );
        assert_eq!(
            n.mode & !0o555,
            0,
            "mode {:o} keeps write or special bits",
            n.mode
        );
        match n.kind {
            NodeKind::File if read < 16 << 20 => {
                let r = a.reader(id, 0).expect("a file has a reader");
                if let Ok(bytes) = a.read(&blob, &r, 0, 65536) {
                    assert!(bytes.len() as u64 <= n.size.min(65536));
                    read += bytes.len() as u64;
                }
            }
            NodeKind::Symlink => assert!(idx.link_target(id).is_some()),
            _ => {}
        }
    }
    let stored = Stored {
        gzip: false,
        zstd: false,
        blob_size: data.len() as u64,
        index: idx.clone(),
        points: Vec::new(),
    };
    assert_eq!(
        Stored::decode(&stored.encode()).expect("round trip"),
        stored
    );
}
