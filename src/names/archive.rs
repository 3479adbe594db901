//! Which layers are archives and what they are called: the `--unpack` mode, tar-family
//! media types, extensions for untitled layers, and the names of archive directories.

use crate::oci::Descriptor;

/// The annotation with which the ORAS CLI marks a directory it pushed as one tarball.
pub const ANNOTATION_UNPACK: &str = "io.deis.oras.content.unpack";
/// Helm's chart layer and config media types.
pub const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";

/// Which archive layers are also shown as directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnpackMode {
    /// Layers annotated `io.deis.oras.content.unpack: "true"`, as `oras pull` unpacks.
    #[default]
    Oras,
    /// Every tar-family layer as well (Helm charts, image layers).
    All,
    /// None.
    None,
}

/// Compression of a tar-family layer, by media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The extension `tar`/`gzip`/`zstd` tools expect.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => ".tar",
            Compression::Gzip => ".tar.gz",
            Compression::Zstd => ".tar.zst",
        }
    }
}

/// The compression of a tar-family media type, or `None` for anything else.
pub fn tar_family(media_type: &str) -> Option<Compression> {
    let mt = media_type.trim().to_ascii_lowercase();
    if mt == HELM_CHART {
        return Some(Compression::Gzip);
    }
    let (base, suffix) = match mt.split_once('+') {
        Some((b, s)) => (b.to_string(), Some(s.to_string())),
        None => (mt.clone(), None),
    };
    // Docker's `…rootfs.diff.tar` and `…rootfs.foreign.diff.tar` end in `.tar` too.
    let tar_base = base.ends_with(".tar") || base == "application/x-tar";
    if base == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        || base == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    {
        return Some(Compression::Gzip);
    }
    if !tar_base {
        return None;
    }
    match suffix.as_deref() {
        None => Some(Compression::None),
        Some("gzip") => Some(Compression::Gzip),
        Some("zstd") => Some(Compression::Zstd),
        Some(_) => None,
    }
}

/// Whether the layer carries the ORAS unpack annotation.
pub fn oras_unpack(layer: &Descriptor) -> bool {
    layer
        .annotations
        .get(ANNOTATION_UNPACK)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// For an ORAS directory push, the archive directory `oras pull` extracts: the title's
/// last component.
pub fn oras_top(layer: &Descriptor) -> Option<&str> {
    layer
        .title()
        .filter(|_| oras_unpack(layer))
        .and_then(|t| t.rsplit('/').next())
}

/// How one layer is named: the file's title (if not the layer's own), the extension of a
/// fallback name, and the directory it is unpacked into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerNaming {
    /// Replaces the layer's title as the file's name.
    pub title: Option<String>,
    /// Appended to `sha256-<hex>` when the layer has no (usable) title.
    pub fallback_ext: &'static str,
    /// The archive directory's name, relative to the file's directory; `None` when it
    /// is derived from the file's final name by [`dir_name_for`].
    pub dir: Option<String>,
    /// Whether the layer is shown as a directory too.
    pub unpack: bool,
}

/// Naming of every layer under a mode. `helm_name` is `NAME-VERSION` from a Helm chart's
/// config, when the manifest is a chart.
pub fn layer_namings(
    layers: &[Descriptor],
    mode: UnpackMode,
    helm_name: Option<&str>,
) -> Vec<LayerNaming> {
    layers
        .iter()
        .map(|l| {
            let Some(comp) = tar_family(&l.media_type) else {
                return LayerNaming::default();
            };
            let mut n = LayerNaming {
                fallback_ext: comp.extension(),
                ..Default::default()
            };
            let title = l.title();
            if l.media_type == HELM_CHART && title.is_none() {
                if let Some(h) = helm_name {
                    n.title = Some(format!("{h}.tgz"));
                }
            }
            let oras = oras_unpack(l) && title.is_some();
            n.unpack = match mode {
                UnpackMode::None => false,
                UnpackMode::Oras => oras,
                UnpackMode::All => true,
            };
            if oras && mode != UnpackMode::None {
                // `oras pull` makes a directory named by the title: the directory takes
                // the title, the file the title plus the archive's extension.
                let t = title.unwrap_or_default();
                n.title = Some(format!("{t}{}", comp.extension()));
                n.dir = t.rsplit('/').next().map(str::to_string);
            }
            n
        })
        .collect()
}

/// The directory beside an archive file named `file`: the name without its tar
/// extension, or `file.d` when there is none to strip.
pub fn dir_name_for(file: &str) -> String {
    let lower = file.to_ascii_lowercase();
    for ext in [".tar.gz", ".tar.zst", ".tgz", ".tar", ".tar.zstd"] {
        if lower.ends_with(ext) && file.len() > ext.len() {
            return file[..file.len() - ext.len()].to_string();
        }
    }
    format!("{file}.d")
}

/// `NAME-VERSION` from a Helm chart's config blob, when both are sound file names.
pub fn helm_chart_name(config: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let name = v.get("name")?.as_str()?;
    let version = v.get("version")?.as_str()?;
    let out = format!("{name}-{version}");
    let sound = |s: &str| {
        !s.is_empty()
            && !s.contains('/')
            && !s.chars().any(char::is_control)
            && s != "."
            && s != ".."
    };
    (sound(name) && sound(version) && out.len() + 4 <= crate::names::MAX_COMPONENT).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        use Compression::*;
        for (mt, want) in [
            ("application/vnd.oci.image.layer.v1.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            (HELM_CHART, Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+lz4", Option::None),
            ("application/octet-stream", Option::None),
            ("text/plain", Option::None),
        ] {
            assert_eq!(tar_family(mt), want, "{mt}");
        }
    }

    #[test]
    fn docker_and_generic_tar_types_are_plain_tars() {
        for mt in [
            "application/x-tar",
            "application/vnd.docker.image.rootfs.diff.tar",
            "application/vnd.docker.image.rootfs.foreign.diff.tar",
        ] {
            assert_eq!(tar_family(mt), Some(Compression::None), "{mt}");
        }
        assert_eq!(
            tar_family("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
    }

    /// An untitled archive layer's fallback name carries the extension tar tools expect.
    #[test]
    fn untitled_archives_are_named_with_their_extension() {
        let d = |mt: &str| Descriptor {
            media_type: mt.into(),
            digest: crate::oci::Digest::of(b"x"),
            size: 1,
            annotations: Default::default(),
            platform: Option::None,
            artifact_type: Option::None,
        };
        let layers = [
            d("application/vnd.oci.image.layer.v1.tar"),
            d("application/vnd.oci.image.layer.v1.tar+gzip"),
            d("application/vnd.oci.image.layer.v1.tar+zstd"),
            d("application/octet-stream"),
        ];
        let exts: Vec<&str> = layer_namings(&layers, UnpackMode::All, Option::None)
            .iter()
            .map(|n| n.fallback_ext)
            .collect();
        assert_eq!(exts, [".tar", ".tar.gz", ".tar.zst", ""]);
    }

    #[test]
    fn the_oras_unpack_annotation_is_true_in_any_case_and_nothing_else() {
        let with = |v: Option<&str>| {
            let mut annotations = std::collections::BTreeMap::new();
            if let Some(v) = v {
                annotations.insert(ANNOTATION_UNPACK.to_string(), v.to_string());
            }
            oras_unpack(&Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                digest: crate::oci::Digest::of(b"x"),
                size: 1,
                annotations,
                platform: Option::None,
                artifact_type: Option::None,
            })
        };
        assert!(with(Some("true")) && with(Some("TRUE")));
        assert!(!with(Some("false")) && !with(Some("yes")) && !with(Option::None));
    }

    fn layer(mt: &str, title: Option<&str>, unpack: Option<&str>) -> Descriptor {
        let mut annotations = std::collections::BTreeMap::new();
        if let Some(t) = title {
            annotations.insert(crate::oci::ANNOTATION_TITLE.to_string(), t.to_string());
        }
        if let Some(u) = unpack {
            annotations.insert(ANNOTATION_UNPACK.to_string(), u.to_string());
        }
        Descriptor {
            media_type: mt.into(),
            digest: crate::oci::Digest::of(b"x"),
            size: 1,
            annotations,
            platform: Option::None,
            artifact_type: Option::None,
        }
    }

    const TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    /// `oras push DIR` gives a layer titled `DIR` with the unpack annotation: the file is
    /// `DIR.tar.gz`, the directory `DIR` (its top directory's contents), shown unless the
    /// mode is `none`. A tarball pushed as a file keeps its title and is shown as a
    /// directory only in mode `all`.
    #[test]
    fn oras_directory_pushes_are_named_as_oras_pull_extracts_them() {
        let pushed_dir = layer(TGZ, Some("data/imagery"), Some("true"));
        let n = &layer_namings(
            std::slice::from_ref(&pushed_dir),
            UnpackMode::Oras,
            Option::None,
        )[0];
        assert_eq!(n.title.as_deref(), Some("data/imagery.tar.gz"));
        assert_eq!(n.dir.as_deref(), Some("imagery"));
        assert!(n.unpack);
        assert_eq!(oras_top(&pushed_dir), Some("imagery"));
        let n = &layer_namings(
            std::slice::from_ref(&pushed_dir),
            UnpackMode::None,
            Option::None,
        )[0];
        assert_eq!(
            (n.title.as_deref(), n.dir.as_deref(), n.unpack),
            (Option::None, Option::None, false)
        );

        let file = layer(TGZ, Some("scenes.tar.gz"), Option::None);
        let untitled = layer(TGZ, Option::None, Some("true"));
        for l in [&file, &untitled] {
            assert_eq!(oras_top(l), Option::None);
            let oras = &layer_namings(std::slice::from_ref(l), UnpackMode::Oras, Option::None)[0];
            assert_eq!(
                (oras.title.as_deref(), oras.dir.as_deref(), oras.unpack),
                (Option::None, Option::None, false)
            );
            let all = &layer_namings(std::slice::from_ref(l), UnpackMode::All, Option::None)[0];
            assert_eq!((all.title.as_deref(), all.unpack), (Option::None, true));
        }
    }

    /// An untitled Helm chart layer is named `NAME-VERSION.tgz` from its config, as
    /// `helm pull` names it; a titled one, or another tar, keeps its own name.
    #[test]
    fn helm_charts_are_named_from_their_config() {
        let layers = [
            layer(HELM_CHART, Option::None, Option::None),
            layer(HELM_CHART, Some("own.tgz"), Option::None),
            layer(TGZ, Option::None, Option::None),
        ];
        let titles: Vec<Option<String>> =
            layer_namings(&layers, UnpackMode::Oras, Some("mychart-0.1.0"))
                .into_iter()
                .map(|n| n.title)
                .collect();
        assert_eq!(
            titles,
            [
                Some("mychart-0.1.0.tgz".to_string()),
                Option::None,
                Option::None
            ]
        );
    }

    #[test]
    fn names() {
        assert_eq!(dir_name_for("chart-1.0.0.tgz"), "chart-1.0.0");
        assert_eq!(dir_name_for("sha256-ab.tar.gz"), "sha256-ab");
        assert_eq!(dir_name_for("blob"), "blob.d");
        assert_eq!(dir_name_for(".tar"), ".tar.d");
        let cfg = br#"{"name":"mychart","version":"0.1.0","apiVersion":"v2"}"#;
        assert_eq!(helm_chart_name(cfg).as_deref(), Some("mychart-0.1.0"));
        assert_eq!(
            helm_chart_name(br#"{"name":"../x","version":"1"}"#),
            Option::None
        );
        // `NAME-VERSION.tgz` must fit in one file name.
        let cfg = |name_len: usize| {
            format!(r#"{{"name":"{}","version":"1"}}"#, "n".repeat(name_len)).into_bytes()
        };
        let longest = crate::names::MAX_COMPONENT - ".tgz".len() - "-1".len();
        assert_eq!(
            helm_chart_name(&cfg(longest)).map(|n| n.len()),
            Some(longest + 2)
        );
        assert_eq!(helm_chart_name(&cfg(longest + 1)), Option::None);
    }
}
