//! OCI image layouts under construction, with anything in them (broken, hostile or
//! merely unusual), for mounting a local layout.

use std::fs;
use std::path::Path;

/// An OCI image layout under construction; anything may be written into it.
pub struct LayoutDir {
    pub dir: tempfile::TempDir,
}

impl LayoutDir {
    /// `oci-layout` 1.0.0, an empty `blobs/sha256/`, no `index.json` yet.
    pub fn new() -> LayoutDir {
        let dir = tempfile::Builder::new()
            .prefix("orasfs-hostile-layout-")
            .tempdir()
            .expect("tempdir");
        fs::create_dir_all(dir.path().join("blobs/sha256")).expect("blobs/");
        fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        LayoutDir { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// The layout as a SOURCE, optionally with `:tag`.
    pub fn source(&self, tag: Option<&str>) -> String {
        match tag {
            Some(t) => format!("{}:{t}", self.path().display()),
            None => self.path().display().to_string(),
        }
    }
    /// Store a blob under its digest; returns its descriptor (digest and size).
    pub fn blob(&self, bytes: &[u8]) -> serde_json::Value {
        let d = super::sha256(bytes);
        self.put(super::hex_of(&d), bytes);
        serde_json::json!({ "digest": d, "size": bytes.len() })
    }
    /// Write `bytes` at `blobs/sha256/<name>`, whatever they hash to.
    pub fn put(&self, name: &str, bytes: &[u8]) {
        fs::write(self.path().join("blobs/sha256").join(name), bytes).expect("write blob");
    }
    /// Store an image manifest of `layers` (descriptors, each given a media type if it has
    /// none) with the empty config; returns the manifest's bytes.
    pub fn image(&self, layers: Vec<serde_json::Value>) -> Vec<u8> {
        let mut config = self.blob(b"{}");
        config["mediaType"] = serde_json::json!(super::OCI_EMPTY);
        let layers: Vec<serde_json::Value> = layers
            .into_iter()
            .map(|mut l| {
                if l.get("mediaType").is_none() {
                    l["mediaType"] = serde_json::json!("application/octet-stream");
                }
                l
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": super::OCI_MANIFEST,
            "config": config,
            "layers": layers,
        }))
        .expect("manifest JSON")
    }
    /// A descriptor for manifest bytes stored as a blob, tagged `tag` if given.
    pub fn manifest_desc(
        &self,
        bytes: &[u8],
        media_type: &str,
        tag: Option<&str>,
    ) -> serde_json::Value {
        let mut d = self.blob(bytes);
        d["mediaType"] = serde_json::json!(media_type);
        if let Some(t) = tag {
            d["annotations"] = serde_json::json!({ super::REF_NAME: t });
        }
        d
    }
    /// Write `index.json` listing these manifest descriptors.
    pub fn index(&self, manifests: Vec<serde_json::Value>) {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": super::OCI_INDEX,
            "manifests": manifests,
        });
        fs::write(
            self.path().join("index.json"),
            serde_json::to_vec(&index).expect("index JSON"),
        )
        .expect("index.json");
    }
}
