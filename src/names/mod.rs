//! Naming rules: how layer titles and index entries become file and directory names.
//!
//! Titles come from whoever pushed the artifact, so they are treated as hostile: absolute
//! paths, `.`/`..`/empty components, control characters and over-long components are
//! refused, as are duplicates and names that collide with the files orasfs adds itself.
//! A refused or missing title never hides a layer: it falls back to `sha256-<hex>`.

pub mod archive;

use std::collections::HashSet;

use crate::names::archive::LayerNaming;
use crate::oci::{Descriptor, Platform};

/// Names orasfs itself places in a manifest directory; titles may not take them.
pub const MANIFEST_FILE: &str = ".manifest.json";
pub const CONFIG_FILE: &str = ".config.json";
/// The directory of artifacts whose `subject` is the manifest.
pub const REFERRERS_DIR: &str = ".referrers";
pub const RESERVED: &[&str] = &[MANIFEST_FILE, CONFIG_FILE, REFERRERS_DIR, ".orasfs"];
/// Longest file-name component Linux accepts.
pub const MAX_COMPONENT: usize = 255;

/// Why a title was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TitleError {
    #[error("title is empty")]
    Empty,
    #[error("title is an absolute path")]
    Absolute,
    #[error("title has an empty, '.' or '..' component")]
    BadComponent,
    #[error("title contains NUL or a control character")]
    ControlCharacter,
    #[error("title has a component longer than 255 bytes")]
    TooLong,
    #[error("title uses a name reserved by orasfs")]
    Reserved,
    #[error("title duplicates or collides with an earlier layer's name")]
    Duplicate,
}

/// Split a title into path components, or say why it is refused.
pub fn title_components(title: &str) -> Result<Vec<String>, TitleError> {
    if title.is_empty() {
        return Err(TitleError::Empty);
    }
    if title.starts_with('/') {
        return Err(TitleError::Absolute);
    }
    if title.chars().any(char::is_control) {
        return Err(TitleError::ControlCharacter);
    }
    let parts: Vec<String> = title.split('/').map(str::to_string).collect();
    for p in &parts {
        if p.is_empty() || p == "." || p == ".." {
            return Err(TitleError::BadComponent);
        }
        if p.len() > MAX_COMPONENT {
            return Err(TitleError::TooLong);
        }
    }
    if RESERVED.contains(&parts[0].as_str()) {
        return Err(TitleError::Reserved);
    }
    Ok(parts)
}

/// Where one layer appears in its manifest directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Path components below the manifest directory.
    pub path: Vec<String>,
    /// Set when the title was present but refused; the layer then uses a fallback name.
    pub refused: Option<(String, TitleError)>,
    /// Where the layer is also shown unpacked, as a directory (archives only).
    pub dir: Option<Vec<String>>,
}

/// Place every layer: by title where the title is sound and unique, else by digest.
/// Earlier layers win conflicts, so the result follows manifest order.
pub fn place_layers(layers: &[Descriptor]) -> Vec<Placement> {
    place_layers_named(layers, &[])
}

/// [`place_layers`] with archive naming ([`crate::names::archive::layer_namings`]): a
/// replacement title, an extension for fallback names, and a directory. Directories are
/// claimed after every file, so one never takes a file's name; one whose name is taken
/// gets `.d` appended, or is left out.
pub fn place_layers_named(layers: &[Descriptor], namings: &[LayerNaming]) -> Vec<Placement> {
    let none = LayerNaming::default();
    let naming = |i: usize| namings.get(i).unwrap_or(&none);
    let mut files: HashSet<Vec<String>> = HashSet::new();
    let mut dirs: HashSet<Vec<String>> = HashSet::new();
    let mut out = Vec::with_capacity(layers.len());
    let mut fallbacks = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let title = naming(i).title.as_deref().or(layer.title());
        let placed = match title {
            None => None,
            Some(title) => match title_components(title).and_then(|p| {
                claim(&p, &mut files, &mut dirs)?;
                Ok(p)
            }) {
                Ok(p) => Some(Placement {
                    path: p,
                    refused: None,
                    dir: None,
                }),
                Err(e) => {
                    fallbacks.push((i, Some((title.chars().take(300).collect(), e))));
                    None
                }
            },
        };
        match placed {
            Some(p) => out.push(Some(p)),
            None => {
                if title.is_none() {
                    fallbacks.push((i, None));
                }
                out.push(None)
            }
        }
    }
    // Fallback names are claimed after every sound title, so a title never loses its name to
    // a fallback; a digest that repeats gets its layer position appended, and should a title
    // already hold that name too (titles may look like anything), a counter after it.
    for (i, refused) in fallbacks {
        let base = format!(
            "sha256-{}{}",
            layers[i].digest.hex(),
            naming(i).fallback_ext
        );
        let mut path = vec![base.clone()];
        let mut n = 0usize;
        // Ends: each refusal is a distinct name already taken, and there are finitely many.
        while claim(&path, &mut files, &mut dirs).is_err() {
            path = vec![match n {
                0 => format!("{base}-{i}"),
                n => format!("{base}-{i}-{n}"),
            }];
            n += 1;
        }
        out[i] = Some(Placement {
            path,
            refused,
            dir: None,
        });
    }
    for (i, p) in out.iter_mut().enumerate() {
        let (Some(p), n) = (p.as_mut(), naming(i)) else {
            continue;
        };
        let Some((file, parent)) = p.path.split_last().filter(|_| n.unpack) else {
            continue;
        };
        let name = n
            .dir
            .clone()
            .unwrap_or_else(|| crate::names::archive::dir_name_for(file));
        let candidates = [name.clone(), format!("{name}.d")];
        p.dir = candidates.into_iter().find_map(|c| {
            let mut d = parent.to_vec();
            d.push(c);
            let sound = title_components(&d.join("/")).is_ok();
            (sound && claim(&d, &mut files, &mut dirs).is_ok()).then_some(d)
        });
    }
    out.into_iter().flatten().collect()
}

fn claim(
    path: &[String],
    files: &mut HashSet<Vec<String>>,
    dirs: &mut HashSet<Vec<String>>,
) -> Result<(), TitleError> {
    let key = path.to_vec();
    if files.contains(&key) || dirs.contains(&key) {
        return Err(TitleError::Duplicate);
    }
    if (1..path.len()).any(|k| files.contains(&path[..k].to_vec())) {
        return Err(TitleError::Duplicate);
    }
    for k in 1..path.len() {
        dirs.insert(path[..k].to_vec());
    }
    files.insert(key);
    Ok(())
}

/// The directory name for an index entry: its platform (`linux-arm64-v8`) when it has one
/// and that name is sound, else its digest (`sha256-<hex>`).
/// Names are unique: an entry whose name is taken (the same digest twice, or a platform
/// that spells another entry's `sha256-<hex>`) gets its position appended.
pub fn index_entry_names(entries: &[Descriptor]) -> Vec<String> {
    let mut seen = HashSet::new();
    entries
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if let Some(n) = d.platform.as_ref().and_then(platform_name) {
                if seen.insert(n.clone()) {
                    return n;
                }
            }
            let base = format!("sha256-{}", d.digest.hex());
            let mut name = base.clone();
            let mut n = 0usize;
            while !seen.insert(name.clone()) {
                name = match n {
                    0 => format!("{base}-{i}"),
                    n => format!("{base}-{i}-{n}"),
                };
                n += 1;
            }
            name
        })
        .collect()
}

fn platform_name(p: &Platform) -> Option<String> {
    let mut parts = vec![p.os.as_str(), p.architecture.as_str()];
    if let Some(v) = p.variant.as_deref() {
        parts.push(v);
    }
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
    };
    if parts.iter().all(|s| ok(s)) {
        Some(parts.join("-"))
    } else {
        None
    }
}

/// Hex digits of the digest in a referrer's name.
const REFERRER_HEX: usize = 12;
/// Longest artifact-type word in a referrer's name.
const MAX_TYPE_WORD: usize = 32;

/// A short word for an artifact type, for referrer directory names:
///
/// 1. well-known families: SBOMs (`spdx`, `cyclonedx`, `syft`) → `sbom`; signatures
///    (`cosign`, `notary`, `signature`, a `.sig` word) → `signature`; `in-toto` statements
///    and attestations → `attestation`;
/// 2. otherwise the last word of the subtype, after dropping a `+suffix` and version words
///    (`v1`, `v1alpha2`, `1.0`), split on `.`: `application/vnd.acme.model.v1+json` →
///    `model`; lowercased, characters other than `a-z`, `0-9` and `-` become `-`, at most
///    32 characters;
/// 3. no artifact type, or nothing left: `artifact`.
pub fn artifact_type_word(artifact_type: Option<&str>) -> String {
    let Some(t) = artifact_type.map(str::to_ascii_lowercase) else {
        return "artifact".into();
    };
    let subtype = t.split_once('/').map_or(t.as_str(), |(_, s)| s);
    let base = subtype.split('+').next().unwrap_or(subtype);
    let words: Vec<&str> = base.split('.').collect();
    let has = |w: &str| words.contains(&w);
    if ["spdx", "cyclonedx", "syft", "sbom"]
        .iter()
        .any(|f| t.contains(f))
    {
        return "sbom".into();
    }
    if t.contains("cosign") || t.contains("notary") || t.contains("signature") || has("sig") {
        return "signature".into();
    }
    if t.contains("in-toto") || t.contains("intoto") || t.contains("attestation") {
        return "attestation".into();
    }
    let is_version = |w: &str| {
        let digits = w.strip_prefix('v').unwrap_or(w);
        digits.starts_with(|c: char| c.is_ascii_digit())
    };
    let word = words
        .iter()
        .rev()
        .find(|w| !w.is_empty() && !is_version(w))
        .map(|w| {
            w.chars()
                .map(|c| {
                    if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .take(MAX_TYPE_WORD)
                .collect::<String>()
        })
        .map(|w| w.trim_matches('-').to_string())
        .unwrap_or_default();
    if word.is_empty() {
        "artifact".into()
    } else {
        word
    }
}

/// Directory names for referrers, in order: `<artifact type word>-<12 hex of the
/// digest>` (see [`artifact_type_word`]); a name taken by an earlier referrer gets the
/// digest's full 64 hex digits instead; a digest listed twice is shown once.
pub fn referrer_names(referrers: &[Descriptor]) -> Vec<(String, Descriptor)> {
    let mut out: Vec<(String, Descriptor)> = Vec::new();
    let mut taken = HashSet::new();
    let mut seen = HashSet::new();
    for d in referrers {
        if !seen.insert(d.digest.clone()) {
            continue;
        }
        let word = artifact_type_word(d.artifact_type.as_deref());
        let short = format!("{word}-{}", &d.digest.hex()[..REFERRER_HEX]);
        let name = if taken.contains(&short) {
            format!("{word}-{}", d.digest.hex())
        } else {
            short
        };
        taken.insert(name.clone());
        out.push((name, d.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use std::collections::BTreeMap;

    fn layer(n: u8, title: Option<&str>) -> Descriptor {
        let mut annotations = BTreeMap::new();
        if let Some(t) = title {
            annotations.insert(crate::oci::ANNOTATION_TITLE.to_string(), t.to_string());
        }
        Descriptor {
            media_type: "application/octet-stream".into(),
            digest: Digest::of(&[n]),
            size: 1,
            annotations,
            platform: None,
            artifact_type: None,
        }
    }

    #[test]
    fn refuses_hostile_titles() {
        let long = "a".repeat(300);
        for t in [
            "../../x",
            "/etc/passwd",
            "a/../../b",
            ".",
            "..",
            "",
            "a//b",
            "a/",
            "x\u{0}y",
            "x\ny",
            "x\u{1b}y",
            long.as_str(),
            ".manifest.json",
            ".orasfs/x",
        ] {
            assert!(title_components(t).is_err(), "{t:?} must be refused");
        }
        assert_eq!(
            title_components("docs/readme.md").unwrap(),
            ["docs", "readme.md"]
        );
        assert!(title_components(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn every_layer_is_reachable_and_first_title_wins() {
        let layers = vec![
            layer(1, Some("imagery.tif")),
            layer(2, Some("imagery.tif")),
            layer(3, None),
            layer(4, Some("../evil")),
            layer(5, Some("docs/readme.md")),
            layer(6, Some("docs")),
            layer(7, Some("Imagery.tif")),
        ];
        let placed = place_layers(&layers);
        assert_eq!(placed.len(), layers.len());
        let names: Vec<String> = placed.iter().map(|p| p.path.join("/")).collect();
        assert_eq!(names[0], "imagery.tif");
        assert_eq!(names[1], format!("sha256-{}", layers[1].digest.hex()));
        assert_eq!(names[2], format!("sha256-{}", layers[2].digest.hex()));
        assert_eq!(names[3], format!("sha256-{}", layers[3].digest.hex()));
        assert_eq!(names[4], "docs/readme.md");
        assert_eq!(names[5], format!("sha256-{}", layers[5].digest.hex()));
        assert_eq!(
            names[6], "Imagery.tif",
            "names differing in case are distinct"
        );
        assert_eq!(placed[1].refused.as_ref().unwrap().1, TitleError::Duplicate);
        let unique: HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn a_title_shaped_like_a_fallback_name_hides_no_layer() {
        let hex = layer(1, None).digest.hex().to_string();
        let layers = vec![
            layer(1, None),
            layer(1, None),
            layer(2, Some(&format!("sha256-{hex}-1"))),
            layer(1, Some("..")),
            layer(3, Some(&format!("sha256-{hex}-3"))),
        ];
        let placed = place_layers(&layers);
        let names: HashSet<_> = placed.iter().map(|p| p.path.clone()).collect();
        assert_eq!(names.len(), layers.len(), "{placed:?}");
        assert_eq!(
            placed[2].path,
            [format!("sha256-{hex}-1")],
            "the title keeps its name"
        );
    }

    #[test]
    fn index_entry_names_are_unique() {
        let b = layer(2, None);
        let mut a = layer(1, None);
        a.platform = Some(Platform {
            architecture: b.digest.hex().to_string(),
            os: "sha256".into(),
            variant: None,
        });
        let names = index_entry_names(&[a, b.clone(), b.clone(), b]);
        let unique: HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn same_digest_twice_without_title_gets_two_names() {
        let layers = vec![layer(1, None), layer(1, None)];
        let placed = place_layers(&layers);
        assert_ne!(placed[0].path, placed[1].path);
    }

    #[test]
    fn platform_names() {
        let mut a = layer(1, None);
        a.platform = Some(Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        });
        let mut b = layer(2, None);
        b.platform = Some(Platform {
            architecture: "../x".into(),
            os: "linux".into(),
            variant: None,
        });
        let names = index_entry_names(&[a, b.clone(), layer(3, None)]);
        assert_eq!(names[0], "linux-arm64-v8");
        assert_eq!(names[1], format!("sha256-{}", b.digest.hex()));
    }

    /// An archive's directory never takes a name a file holds: `a.tar.gz` beside a file
    /// `a` unpacks into `a.d`; with `a.d` taken too, it is not shown as a directory.
    #[test]
    fn an_archive_directory_never_takes_a_files_name() {
        let tar = |n: u8, title: &str| Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            ..layer(n, Some(title))
        };
        let dirs = |layers: &[Descriptor]| -> Vec<Option<String>> {
            let namings: Vec<LayerNaming> = layers
                .iter()
                .map(|l| LayerNaming {
                    unpack: archive::tar_family(&l.media_type).is_some(),
                    ..LayerNaming::default()
                })
                .collect();
            place_layers_named(layers, &namings)
                .into_iter()
                .map(|p| p.dir.map(|d| d.join("/")))
                .collect()
        };
        assert_eq!(dirs(&[tar(1, "a.tar.gz")]), [Some("a".to_string())]);
        assert_eq!(
            dirs(&[tar(1, "a.tar.gz"), layer(2, Some("a"))]),
            [Some("a.d".to_string()), None]
        );
        assert_eq!(
            dirs(&[
                tar(1, "a.tar.gz"),
                layer(2, Some("a")),
                layer(3, Some("a.d"))
            ]),
            [None, None, None]
        );
        // Two archives that strip to one name: the first keeps it.
        assert_eq!(
            dirs(&[tar(1, "x/a.tar.gz"), tar(2, "x/a.tar")]),
            [Some("x/a".to_string()), Some("x/a.d".to_string())]
        );
    }

    /// A platform name that spells an entry's fallback with its position appended pushes
    /// that entry on to a counted name; every entry still gets a name of its own.
    #[test]
    fn index_entry_names_count_past_a_taken_positional_name() {
        let b = layer(2, None);
        let mut a = layer(1, None);
        a.platform = Some(Platform {
            os: "sha256".into(),
            architecture: b.digest.hex().to_string(),
            variant: Some("2".into()),
        });
        let names = index_entry_names(&[a, b.clone(), b]);
        let hex = layer(2, None).digest.hex().to_string();
        assert_eq!(
            names,
            [
                format!("sha256-{hex}-2"),
                format!("sha256-{hex}"),
                format!("sha256-{hex}-2-1"),
            ]
        );
    }

    #[test]
    fn platform_names_allow_dots_and_underscores_and_nothing_else() {
        let named = |arch: &str| {
            let mut d = layer(1, None);
            d.platform = Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            });
            platform_name(d.platform.as_ref().unwrap())
        };
        assert_eq!(named("arm64_v8.2").as_deref(), Some("linux-arm64_v8.2"));
        for bad in ["x/y", "x y", "x-y", "", "é"] {
            assert_eq!(named(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn artifact_type_families_are_found_by_any_one_of_their_marks() {
        for (t, w) in [
            (
                "application/vnd.dev.cosign.simplesigning.v1+json",
                "signature",
            ),
            ("application/vnd.cncf.notary.v2", "signature"),
            ("application/vnd.example.signature", "signature"),
            ("application/vnd.example.sig", "signature"),
            ("application/vnd.in-toto.bundle", "attestation"),
            ("application/vnd.dsse.intoto", "attestation"),
            ("application/vnd.github.attestation", "attestation"),
            ("application/vnd.acme.s3data.v1+json", "s3data"),
        ] {
            assert_eq!(artifact_type_word(Some(t)), w, "{t}");
        }
    }

    #[test]
    fn artifact_type_words() {
        for (t, w) in [
            ("application/spdx+json", "sbom"),
            ("application/vnd.cyclonedx+xml", "sbom"),
            (
                "application/vnd.dev.cosign.artifact.sig.v1+json",
                "signature",
            ),
            ("application/vnd.cncf.notary.signature", "signature"),
            ("application/vnd.in-toto+json", "attestation"),
            ("application/vnd.acme.model.v1+json", "model"),
            ("application/vnd.oci.image.config.v1+json", "config"),
            ("application/sarif+json", "sarif"),
            ("application/vnd.acme.Weird_Name.v2", "weird-name"),
            ("text/plain", "plain"),
            ("application/v1.2", "artifact"),
            ("application/", "artifact"),
        ] {
            assert_eq!(artifact_type_word(Some(t)), w, "{t}");
        }
        assert_eq!(artifact_type_word(None), "artifact");
        let long = format!("application/{}", "x".repeat(300));
        assert_eq!(artifact_type_word(Some(&long)).len(), MAX_TYPE_WORD);
    }

    #[test]
    fn referrer_names_are_unique() {
        let d = |hex: &str, t: Option<&str>| Descriptor {
            artifact_type: t.map(str::to_string),
            digest: Digest::parse(&format!("sha256:{hex}")).unwrap(),
            ..layer(0, None)
        };
        let a = format!("1a2b3c4d5e6f{}", "0".repeat(52));
        let b = format!("1a2b3c4d5e6f{}", "1".repeat(52));
        let names: Vec<String> = referrer_names(&[
            d(&a, Some("application/spdx+json")),
            d(&b, Some("application/spdx+json")),
            d(&a, Some("application/spdx+json")),
            d(&b, None),
        ])
        .into_iter()
        .map(|(n, _)| n)
        .collect();
        assert_eq!(
            names,
            ["sbom-1a2b3c4d5e6f".to_string(), format!("sbom-{b}")]
        );
    }
}
