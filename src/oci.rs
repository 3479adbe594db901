//! OCI data model: validated digests, descriptors, manifests, indexes (OCI and Docker v2),
//! media types and the size caps that keep attacker-controlled sizes harmless.
//!
//! A [`Digest`] is only ever built by parsing and validation, so the hex part can be used
//! as a file name without ever becoming a path fragment an attacker chose.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Manifests, indexes and configs larger than this are refused before they are read.
pub const MAX_METADATA_SIZE: u64 = 4 * 1024 * 1024;
/// Descriptor sizes above this are treated as hostile.
pub const MAX_BLOB_SIZE: u64 = 1 << 50;
/// At most this many layers in one manifest, and entries in one index.
pub const MAX_ENTRIES: usize = 65_536;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The `Accept` header for manifest requests: every manifest type we understand.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors in OCI documents and identifiers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OciError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
    InvalidDigest(String),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
}

/// A validated `sha256:<hex>` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parse and validate `sha256:<64 lowercase hex>`. Other algorithms are refused.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| OciError::InvalidDigest(truncate(s)))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(OciError::InvalidDigest(truncate(s)));
        }
        Ok(Self {
            hex: hex.to_string(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher computed.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// The 64 hex characters, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Check that `bytes` hash to this digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), OciError> {
        let actual = Self::of(bytes);
        if &actual == self {
            Ok(())
        } else {
            Err(OciError::DigestMismatch {
                expected: self.clone(),
                actual,
            })
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The platform of an index entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A content descriptor: what a manifest says about one blob.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// The `org.opencontainers.image.title` annotation, if any.
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(ANNOTATION_TITLE).map(String::as_str)
    }
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub subject: Option<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest document of either kind. Few are alive at once (one per manifest
/// directory), so the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl Manifest {
    /// Parse manifest bytes. The type comes from the document's `mediaType`, then from the
    /// transport's content type, then from its shape (`manifests` vs `config`).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, OciError> {
        if bytes.len() as u64 > MAX_METADATA_SIZE {
            return Err(OciError::TooLarge {
                what: "manifest",
                size: bytes.len() as u64,
                limit: MAX_METADATA_SIZE,
            });
        }
        let malformed = |e: serde_json::Error| OciError::Malformed {
            what: "manifest",
            detail: e.to_string(),
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(malformed)?;
        if let Some(v) = probe.schema_version {
            if v != 2 {
                return Err(OciError::Malformed {
                    what: "manifest",
                    detail: format!("schemaVersion {v} is not supported (need 2)"),
                });
            }
        }
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .filter(|c| {
                !c.is_empty() && *c != "application/json" && *c != "application/octet-stream"
            });
        let media_type = probe.media_type.as_deref().or(content_type);
        let is_index = match media_type {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) if probe.manifests.is_none() && probe.config.is_none() => {
                return Err(OciError::UnsupportedMediaType(truncate(other)))
            }
            _ => probe.manifests.is_some() && probe.config.is_none(),
        };
        let manifest = if is_index {
            let index: ImageIndex = serde_json::from_slice(bytes).map_err(malformed)?;
            check_count(index.manifests.len(), "index entries")?;
            index.manifests.iter().try_for_each(check_size)?;
            Manifest::Index(index)
        } else {
            let image: ImageManifest = serde_json::from_slice(bytes).map_err(malformed)?;
            check_count(image.layers.len(), "layers")?;
            check_size(&image.config)?;
            image.layers.iter().try_for_each(check_size)?;
            Manifest::Image(image)
        };
        Ok(manifest)
    }

    /// The media type to report for this document.
    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image(m) => m.media_type.as_deref().unwrap_or(OCI_MANIFEST),
            Manifest::Index(i) => i.media_type.as_deref().unwrap_or(OCI_INDEX),
        }
    }

    /// The document's annotations.
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        match self {
            Manifest::Image(m) => &m.annotations,
            Manifest::Index(i) => &i.annotations,
        }
    }
}

fn check_count(n: usize, what: &'static str) -> Result<(), OciError> {
    if n > MAX_ENTRIES {
        return Err(OciError::TooLarge {
            what,
            size: n as u64,
            limit: MAX_ENTRIES as u64,
        });
    }
    Ok(())
}

fn check_size(d: &Descriptor) -> Result<(), OciError> {
    if d.size > MAX_BLOB_SIZE {
        return Err(OciError::TooLarge {
            what: "descriptor size",
            size: d.size,
            limit: MAX_BLOB_SIZE,
        });
    }
    Ok(())
}

/// Whether a media type names a manifest or index (as opposed to a plain blob).
pub fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "5f2a7c0b8e1d4a3f9b6c2e8d7a1f0b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";

    #[test]
    fn digest_accepts_only_sha256_hex() {
        assert!(Digest::parse(&format!("sha256:{HEX}")).is_ok());
        for bad in [
            "sha256:../x".to_string(),
            format!("sha512:{HEX}"),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{HEX}0"),
            HEX.to_string(),
            String::new(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn digest_of_known_bytes() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Digest::of(b"a").verify(b"b").is_err());
    }

    fn desc(size: i64) -> String {
        format!(r#"{{"mediaType":"x","digest":"sha256:{HEX}","size":{size}}}"#)
    }

    #[test]
    fn parses_image_and_index_by_shape_and_type() {
        let image = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
            desc(2),
            desc(3)
        );
        match Manifest::parse(image.as_bytes(), None).unwrap() {
            Manifest::Image(m) => assert_eq!(m.layers.len(), 1),
            other => panic!("{other:?}"),
        }
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, desc(2));
        assert!(matches!(
            Manifest::parse(index.as_bytes(), Some(DOCKER_LIST)).unwrap(),
            Manifest::Index(_)
        ));
    }

    #[test]
    fn refuses_negative_absurd_and_oversized() {
        let neg = format!(r#"{{"config":{},"layers":[]}}"#, desc(-1));
        assert!(Manifest::parse(neg.as_bytes(), None).is_err());
        let absurd = format!(r#"{{"config":{},"layers":[]}}"#, desc(1 << 60));
        assert!(matches!(
            Manifest::parse(absurd.as_bytes(), None),
            Err(OciError::TooLarge { .. })
        ));
        let big = vec![b' '; MAX_METADATA_SIZE as usize + 1];
        assert!(matches!(
            Manifest::parse(&big, None),
            Err(OciError::TooLarge { .. })
        ));
        assert!(Manifest::parse(b"{not json", None).is_err());
        assert!(Manifest::parse(br#"{"schemaVersion":1}"#, None).is_err());
    }

    /// The declared type decides over the document's shape, for each of the four types.
    #[test]
    fn the_media_type_decides_over_the_shape() {
        for ty in [OCI_INDEX, DOCKER_LIST] {
            // An index that also carries a `config` is still an index.
            let doc = format!(
                r#"{{"schemaVersion":2,"mediaType":"{ty}","manifests":[{}],"config":{}}}"#,
                desc(2),
                desc(3)
            );
            assert!(
                matches!(
                    Manifest::parse(doc.as_bytes(), None),
                    Ok(Manifest::Index(_))
                ),
                "{ty}"
            );
            // Declared by the transport's content type instead.
            let doc = format!(r#"{{"manifests":[{}],"config":{}}}"#, desc(2), desc(3));
            assert!(
                matches!(
                    Manifest::parse(doc.as_bytes(), Some(ty)),
                    Ok(Manifest::Index(_))
                ),
                "{ty} as content type"
            );
        }
        for ty in [OCI_MANIFEST, DOCKER_MANIFEST] {
            // A document that says it is a manifest is never read as an index.
            let doc = format!(r#"{{"mediaType":"{ty}","manifests":[{}]}}"#, desc(2));
            assert!(
                matches!(
                    Manifest::parse(doc.as_bytes(), None),
                    Err(OciError::Malformed { .. })
                ),
                "{ty}"
            );
        }
        assert!(matches!(
            Manifest::parse(br#"{"mediaType":"text/plain"}"#, None),
            Err(OciError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn manifest_types_are_the_four_and_only_those() {
        for ty in [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST] {
            assert!(is_manifest_type(ty), "{ty}");
        }
        for ty in [
            "application/octet-stream",
            "",
            "application/vnd.oci.image.layer.v1.tar",
        ] {
            assert!(!is_manifest_type(ty), "{ty}");
        }
    }

    /// The limits sit exactly at their documented values, written here as numbers (not
    /// computed from the constants under test): a 2^50-byte descriptor, 65 536 entries and
    /// a 4 MiB document pass; one more does not.
    #[test]
    fn limits_sit_exactly_at_their_documented_values() {
        let doc = |size: i64| format!(r#"{{"config":{},"layers":[]}}"#, desc(size));
        assert!(Manifest::parse(doc(1_125_899_906_842_624).as_bytes(), None).is_ok());
        assert!(matches!(
            Manifest::parse(doc(1_125_899_906_842_625).as_bytes(), None),
            Err(OciError::TooLarge { .. })
        ));
        // 65 537 descriptors take more than 4 MiB, so the entry cap is not reachable
        // through `Manifest::parse`; it is checked on its own.
        assert!(check_count(65_536, "layers").is_ok());
        assert!(matches!(
            check_count(65_537, "layers"),
            Err(OciError::TooLarge { .. })
        ));
        let mut padded = doc(1).into_bytes();
        padded.resize(4_194_304, b' ');
        assert!(Manifest::parse(&padded, None).is_ok(), "exactly 4 MiB");
        padded.push(b' ');
        assert!(matches!(
            Manifest::parse(&padded, None),
            Err(OciError::TooLarge { .. })
        ));
    }

    /// Without a declared type, a generic content type is no type at all and the shape
    /// decides; an unknown declared type is refused only when the document has no shape.
    #[test]
    fn generic_content_types_and_unknown_types_fall_back_to_the_shape() {
        let shapeless = br#"{"schemaVersion":2}"#;
        for ct in [
            None,
            Some(""),
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("application/octet-stream"),
        ] {
            // No type and no shape: read as an image manifest, which lacks its config.
            assert!(
                matches!(
                    Manifest::parse(shapeless, ct),
                    Err(OciError::Malformed { .. })
                ),
                "{ct:?}"
            );
        }
        // Both `manifests` and `config`, no type: an image manifest.
        let both = format!(
            r#"{{"manifests":[{}],"config":{},"layers":[]}}"#,
            desc(2),
            desc(3)
        );
        assert!(matches!(
            Manifest::parse(both.as_bytes(), None),
            Ok(Manifest::Image(_))
        ));
        // An unknown type with the shape of an image manifest, or of an index.
        let image = format!(r#"{{"mediaType":"x/y","config":{},"layers":[]}}"#, desc(3));
        assert!(matches!(
            Manifest::parse(image.as_bytes(), None),
            Ok(Manifest::Image(_))
        ));
        let index = format!(r#"{{"mediaType":"x/y","manifests":[{}]}}"#, desc(2));
        assert!(matches!(
            Manifest::parse(index.as_bytes(), None),
            Ok(Manifest::Index(_))
        ));
    }

    /// What the filesystem and the messages show of a document: the digest's hex (cache
    /// paths), its text in logs, a layer's title (file names), the type and annotations
    /// of a manifest (xattrs, mtimes), and at most 80 characters of refused input.
    #[test]
    fn accessors_show_the_document_and_errors_quote_it_briefly() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(d.hex(), HEX);
        assert_eq!(format!("{d:?}"), format!("sha256:{HEX}"));
        assert_eq!(format!("{d}"), format!("sha256:{HEX}"));

        let long = format!("sha256:{}", "g".repeat(200));
        match Digest::parse(&long) {
            Err(OciError::InvalidDigest(quoted)) => assert_eq!(quoted, long[..80]),
            other => panic!("{other:?}"),
        }
        let odd = format!("application/x-{}", "y".repeat(200));
        match Manifest::parse(b"{\"schemaVersion\":2}", Some(&odd)) {
            Err(OciError::UnsupportedMediaType(quoted)) => assert_eq!(quoted, odd[..80]),
            other => panic!("{other:?}"),
        }

        let titled: Descriptor = serde_json::from_str(&format!(
            r#"{{"digest":"sha256:{HEX}","size":1,"annotations":{{"{ANNOTATION_TITLE}":"a.txt"}}}}"#
        ))
        .unwrap();
        assert_eq!(titled.title(), Some("a.txt"));
        let untitled: Descriptor =
            serde_json::from_str(&format!(r#"{{"digest":"sha256:{HEX}","size":1}}"#)).unwrap();
        assert_eq!(untitled.title(), None);

        let image = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[],"annotations":{{"k":"v"}}}}"#,
            desc(2)
        );
        let m = Manifest::parse(image.as_bytes(), None).unwrap();
        assert_eq!(m.media_type(), OCI_MANIFEST);
        assert_eq!(
            m.annotations(),
            &BTreeMap::from([("k".to_string(), "v".to_string())])
        );
        let typed = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{},"layers":[]}}"#,
            desc(2)
        );
        let m = Manifest::parse(typed.as_bytes(), None).unwrap();
        assert_eq!(m.media_type(), DOCKER_MANIFEST);
        assert!(m.annotations().is_empty());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{}],"annotations":{{"i":"j"}}}}"#,
            desc(2)
        );
        let i = Manifest::parse(index.as_bytes(), None).unwrap();
        assert_eq!(i.media_type(), OCI_INDEX);
        assert_eq!(
            i.annotations(),
            &BTreeMap::from([("i".to_string(), "j".to_string())])
        );
    }
}
