//! The checks behind every fuzz target, shared with the regression tests in
//! `tests/fuzz_regressions.rs` (which include this file by path): each takes untrusted
//! bytes, must not panic except on a broken invariant, and asserts what the rest of
//! orasfs relies on.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use orasfs::names::{self, MAX_COMPONENT, RESERVED};
use orasfs::oci::{
    self, Descriptor, Digest, Manifest, ANNOTATION_TITLE, MAX_BLOB_SIZE, MAX_ENTRIES,
    MAX_METADATA_SIZE,
};
use orasfs::registry::headers::{
    parse_challenge, parse_content_range, parse_link_next, parse_retry_after, Challenge,
};
use orasfs::source::{valid_repo_name, valid_tag, Reference};
use orasfs::target::{self, Target};
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
