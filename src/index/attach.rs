//! The two ways an index is attached to an artifact, as manifest documents:
//!
//! - **referrer**: an artifact manifest (`artifactType` = the index media type, the OCI
//!   empty config, one layer per index blob) whose `subject` is the data manifest. The
//!   artifact is unchanged; the index is trusted only as far as the registry is.
//! - **embedded**: the data manifest rewritten with the index blobs as extra layers and
//!   each data layer annotated with its index's digest and root, so the manifest digest
//!   binds the index.
//!
//! Also the referrers tag schema's index (`sha256-<hex>`), for registries without the
//! referrers API. Pure functions over JSON; pushing is elsewhere.

use serde_json::{json, Map, Value};

use super::build::Built;
use super::format::{ANNOTATION_BLOB, ANNOTATION_INDEX, ANNOTATION_ROOT, MEDIA_TYPE};

use crate::oci::{Digest, OCI_INDEX, OCI_MANIFEST};

/// The OCI empty descriptor's media type and content (`{}`).
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// The media type of an archive index (member table and gzip checkpoints of a
/// tar-family layer; the format is `crate::archive::remote`'s), attached beside the
/// block index.
pub const ARCHIVE_MEDIA_TYPE: &str = "application/vnd.orasfs.archive-index.v1";
/// On a data layer (embedded mode): the digest of its archive index, and its root.
pub const ANNOTATION_ARCHIVE_DIGEST: &str = "io.orasfs.archive.digest";
pub const ANNOTATION_ARCHIVE_ROOT: &str = "io.orasfs.archive.root";

/// An archive index made for a layer: its bytes and root (what the annotations bind).
#[derive(Debug, Clone)]
pub struct Published {
    pub bytes: Vec<u8>,
    pub root: Digest,
}

/// One data layer and the index made for it.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub layer: Digest,
    pub index: Built,
    /// The archive index of a tar-family layer.
    pub archive: Option<Published>,
}

/// A descriptor as JSON.
pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Map<String, Value> {
    let mut d = Map::new();
    d.insert("mediaType".into(), json!(media_type));
    d.insert("digest".into(), json!(digest.to_string()));
    d.insert("size".into(), json!(size));
    d
}

/// The descriptor of an index blob, as a layer: it names the data blob and the root.
fn index_layer(i: &Indexed) -> Value {
    let mut d = descriptor(MEDIA_TYPE, &i.index.digest, i.index.bytes.len() as u64);
    d.insert(
        "annotations".into(),
        json!({
            ANNOTATION_BLOB: i.layer.to_string(),
            ANNOTATION_ROOT: i.index.root.to_string(),
        }),
    );
    Value::Object(d)
}

/// The descriptor of an archive index blob, as a layer: it names the data blob and the
/// root of its head.
fn archive_layer(layer: &Digest, a: &Published) -> Value {
    let mut d = descriptor(
        ARCHIVE_MEDIA_TYPE,
        &Digest::of(&a.bytes),
        a.bytes.len() as u64,
    );
    d.insert(
        "annotations".into(),
        json!({
            ANNOTATION_BLOB: layer.to_string(),
            ANNOTATION_ROOT: a.root.to_string(),
        }),
    );
    Value::Object(d)
}

/// Every index layer of `indexes`: block indexes, then archive indexes.
fn index_layers(indexes: &[Indexed]) -> Vec<Value> {
    let blocks = indexes.iter().map(index_layer);
    let archives = indexes
        .iter()
        .filter_map(|i| i.archive.as_ref().map(|a| archive_layer(&i.layer, a)));
    blocks.chain(archives).collect()
}

/// The referrer artifact manifest holding `indexes`, with `subject` as its subject.
pub fn referrer_manifest(subject: Map<String, Value>, indexes: &[Indexed]) -> Vec<u8> {
    let config = descriptor(
        EMPTY_MEDIA_TYPE,
        &Digest::of(EMPTY_CONFIG),
        EMPTY_CONFIG.len() as u64,
    );
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MEDIA_TYPE,
        "config": config,
        "layers": index_layers(indexes),
        "subject": subject,
    });
    doc.to_string().into_bytes()
}

/// Why a manifest could not be rewritten.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot embed the index: {0}")]
pub struct EmbedError(String);

/// The data manifest rewritten to carry `indexes`: index layers from an earlier run are
/// dropped, every data layer that was indexed gets [`ANNOTATION_INDEX`] and
/// [`ANNOTATION_ROOT`], and the index blobs are appended as layers. Every other field of
/// the manifest is kept.
pub fn embed(manifest: &[u8], indexes: &[Indexed]) -> Result<Vec<u8>, EmbedError> {
    let bad = |s: &str| EmbedError(s.to_string());
    let mut doc: Value = serde_json::from_slice(manifest).map_err(|e| EmbedError(e.to_string()))?;
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| bad("the manifest is not a JSON object"))?;
    match obj.get("mediaType").and_then(Value::as_str) {
        None | Some(OCI_MANIFEST) => {}
        Some(other) => {
            return Err(EmbedError(format!(
                "--embed rewrites OCI image manifests only, not {other}; use the referrer mode"
            )))
        }
    }
    let layers = obj
        .get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("the manifest has no layers"))?;
    layers.retain(|l| {
        let mt = l.get("mediaType").and_then(Value::as_str);
        mt != Some(MEDIA_TYPE) && mt != Some(ARCHIVE_MEDIA_TYPE)
    });
    for layer in layers.iter_mut() {
        let Some(l) = layer.as_object_mut() else {
            return Err(bad("a layer is not a JSON object"));
        };
        let digest = l.get("digest").and_then(Value::as_str).unwrap_or("");
        let Some(found) = indexes.iter().find(|i| i.layer.to_string() == digest) else {
            continue;
        };
        let ann = l
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(ann) = ann.as_object_mut() else {
            return Err(bad("a layer's annotations are not a JSON object"));
        };
        ann.insert(
            ANNOTATION_INDEX.into(),
            json!(found.index.digest.to_string()),
        );
        ann.insert(ANNOTATION_ROOT.into(), json!(found.index.root.to_string()));
        if let Some(a) = &found.archive {
            ann.insert(
                ANNOTATION_ARCHIVE_DIGEST.into(),
                json!(Digest::of(&a.bytes).to_string()),
            );
            ann.insert(ANNOTATION_ARCHIVE_ROOT.into(), json!(a.root.to_string()));
        }
    }
    layers.extend(index_layers(indexes));
    Ok(doc.to_string().into_bytes())
}

/// The referrers tag schema's index with `referrer` added, or `None` when `existing`
/// already lists it. `existing` is the index now under the tag, if any.
pub fn add_to_referrers_index(
    existing: Option<&[u8]>,
    referrer: Map<String, Value>,
) -> Result<Option<Vec<u8>>, EmbedError> {
    let mut doc = match existing {
        Some(b) => serde_json::from_slice(b)
            .map_err(|e| EmbedError(format!("the referrers tag's index: {e}")))?,
        None => json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
    };
    let list = doc
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| EmbedError("the referrers tag does not hold an index".into()))?;
    if list
        .iter()
        .any(|m| m.get("digest") == referrer.get("digest"))
    {
        return Ok(None);
    }
    list.push(Value::Object(referrer));
    Ok(Some(doc.to_string().into_bytes()))
}

/// The descriptor of the referrer manifest, as listed among a subject's referrers.
pub fn referrer_descriptor(manifest: &[u8]) -> Map<String, Value> {
    let mut d = descriptor(OCI_MANIFEST, &Digest::of(manifest), manifest.len() as u64);
    d.insert("artifactType".into(), json!(MEDIA_TYPE));
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Manifest, ANNOTATION_TITLE};

    fn indexed(layer: &[u8]) -> Indexed {
        let mut b =
            super::super::format::Builder::new(&Digest::of(layer), layer.len() as u64, 4096);
        b.update(layer);
        let (bytes, root) = b.finish().unwrap();
        Indexed {
            layer: Digest::of(layer),
            index: Built {
                digest: Digest::of(&bytes),
                bytes,
                root,
            },
            archive: None,
        }
    }

    fn data_manifest() -> Vec<u8> {
        let l = |b: &[u8], t: &str| {
            let mut d = descriptor("application/octet-stream", &Digest::of(b), b.len() as u64);
            d.insert("annotations".into(), json!({ ANNOTATION_TITLE: t }));
            Value::Object(d)
        };
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/x-test",
            "config": descriptor(EMPTY_MEDIA_TYPE, &Digest::of(EMPTY_CONFIG), 2),
            "layers": [l(b"one", "a.bin"), l(b"two", "b.bin")],
            "annotations": {"keep": "me"},
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn embedding_annotates_data_layers_appends_indexes_and_is_idempotent() {
        let idx = [indexed(b"one"), indexed(b"two")];
        let once = embed(&data_manifest(), &idx).unwrap();
        let Manifest::Image(m) = Manifest::parse(&once, None).unwrap() else {
            panic!("not an image");
        };
        assert_eq!(m.layers.len(), 4);
        assert_eq!(m.annotations.get("keep").map(String::as_str), Some("me"));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-test"));
        for (data, i) in m.layers[..2].iter().zip(&idx) {
            assert_eq!(
                data.title(),
                Some(if data.digest == Digest::of(b"one") {
                    "a.bin"
                } else {
                    "b.bin"
                })
            );
            assert_eq!(
                data.annotations[ANNOTATION_INDEX],
                i.index.digest.to_string()
            );
            assert_eq!(data.annotations[ANNOTATION_ROOT], i.index.root.to_string());
        }
        for (ix, i) in m.layers[2..].iter().zip(&idx) {
            assert_eq!(ix.media_type, MEDIA_TYPE);
            assert_eq!(ix.digest, i.index.digest);
            assert_eq!(ix.annotations[ANNOTATION_BLOB], i.layer.to_string());
        }
        // Embedding again into the result changes nothing.
        assert_eq!(embed(&once, &idx).unwrap(), once);
        // A Docker manifest is refused, with the way out named.
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#;
        assert!(embed(docker, &idx).unwrap_err().0.contains("referrer"));
    }

    #[test]
    fn the_referrer_names_its_subject_and_the_tag_index_lists_it_once() {
        let idx = [indexed(b"one")];
        let subject = descriptor(OCI_MANIFEST, &Digest::of(&data_manifest()), 9);
        let bytes = referrer_manifest(subject.clone(), &idx);
        let Manifest::Image(m) = Manifest::parse(&bytes, None).unwrap() else {
            panic!("not an image");
        };
        assert_eq!(m.artifact_type.as_deref(), Some(MEDIA_TYPE));
        assert_eq!(m.subject.unwrap().digest, Digest::of(&data_manifest()));
        assert_eq!(m.config.media_type, EMPTY_MEDIA_TYPE);
        assert_eq!(
            m.layers[0].annotations[ANNOTATION_ROOT],
            idx[0].index.root.to_string()
        );

        let d = referrer_descriptor(&bytes);
        let first = add_to_referrers_index(None, d.clone()).unwrap().unwrap();
        assert!(add_to_referrers_index(Some(&first), d).unwrap().is_none());
        let other = referrer_descriptor(b"{}");
        let second = add_to_referrers_index(Some(&first), other)
            .unwrap()
            .unwrap();
        let Manifest::Index(i) = Manifest::parse(&second, None).unwrap() else {
            panic!("not an index");
        };
        assert_eq!(i.manifests.len(), 2);
        assert_eq!(i.manifests[0].artifact_type.as_deref(), Some(MEDIA_TYPE));
    }
}
