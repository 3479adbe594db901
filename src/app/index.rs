//! `orasfs index REF`: stream each data layer of one image manifest once, build its
//! block-digest index, push the index blobs, and attach them — as a referrer artifact
//! (default) or embedded in a rewritten manifest (`--embed`). Prints the digest of the
//! manifest it pushed on standard output; progress goes to standard error.

use std::time::Instant;

use crate::app::config::{IndexConfig, RegistryConfig};
use crate::app::connect::{client, login};
use crate::app::mount::{split_scheme, Failure};
use crate::app::target::{self, Target};
use crate::index::attach::{self, descriptor, Indexed, EMPTY_CONFIG};
use crate::index::build;
use crate::index::format::MEDIA_TYPE;
use crate::index::publish::{Destination, LayoutDestination, RegistryDestination};
use crate::oci::{Digest, Manifest, OCI_MANIFEST};
use crate::source::layout::LayoutSource;
use crate::source::registry::adapter::RegistrySource;
use crate::source::{valid_tag, Reference, Source};

/// Run `orasfs index`.
pub fn run(args: &IndexConfig) -> Result<(), Failure> {
    if let Some(t) = args.tag.as_deref().filter(|t| !valid_tag(t)) {
        return Err(format!("--tag {t:?} is not a valid tag"));
    }
    let (plain, target_arg) = split_scheme(&args.reference, args.registry.plain_http)?;
    let digest = match target::parse(target_arg)? {
        Target::Layout {
            path,
            tag: Some(tag),
        } => {
            let layout = LayoutSource::open(&path).map_err(|e| e.to_string())?;
            let dest = LayoutDestination::new(layout.root());
            let what = format!("{}:{tag}", layout.root().display());
            index_and_attach(args, &layout, "", &Reference::Tag(tag), &dest, &what)?
        }
        Target::Layout { path, tag: None } => {
            return Err(format!(
                "{}: name the artifact to index with a tag: {}:TAG",
                path.display(),
                path.display()
            ))
        }
        Target::Registry {
            registry,
            repo: Some(repo),
            reference: Some(reference),
        } => {
            let src = connect(&args.registry, &registry, plain).map_err(|e| e.to_string())?;
            let dest = RegistryDestination {
                client: src.client(),
                source: &src,
                repo: repo.clone(),
            };
            let what = format!("{registry}/{}", reference.qualify(&repo));
            index_and_attach(args, &src, &repo, &reference, &dest, &what)?
        }
        Target::Registry { .. } => {
            return Err(format!(
                "{}: name one artifact: HOST[:PORT]/REPO:TAG or HOST[:PORT]/REPO@sha256:HEX",
                args.reference
            ))
        }
    };
    println!("{digest}");
    Ok(())
}

/// A registry client for `orasfs index`, with the credentials the flags or files give,
/// checked to answer.
fn connect(
    flags: &RegistryConfig,
    registry: &str,
    plain: Option<bool>,
) -> Result<RegistrySource, crate::error::SourceError> {
    let explicit = login(flags).map_err(|detail| crate::error::SourceError::Protocol {
        what: "--password-stdin".into(),
        detail,
    })?;
    let src = RegistrySource::new(client(flags, registry, explicit, plain)?);
    src.ping()?;
    Ok(src)
}

/// Index every data layer of the image manifest `reference` and attach the indexes to it
/// in `dest`; returns the digest of the manifest pushed.
fn index_and_attach(
    args: &IndexConfig,
    source: &dyn Source,
    repo: &str,
    reference: &Reference,
    dest: &dyn Destination,
    what: &str,
) -> Result<Digest, Failure> {
    let fetched = source
        .manifest(repo, reference)
        .map_err(|e| e.to_string())?;
    let Manifest::Image(m) = &fetched.manifest else {
        return Err(format!(
            "{what} is an image index; index one of its manifests by digest"
        ));
    };
    dest.check_writable().map_err(|e| e.to_string())?;
    let mut indexed: Vec<Indexed> = Vec::new();
    let data = |l: &&crate::oci::Descriptor| {
        l.media_type != MEDIA_TYPE && !crate::archive::remote::is_archive_index(l)
    };
    for layer in m.layers.iter().filter(data) {
        if indexed.iter().any(|i| i.layer == layer.digest) {
            continue;
        }
        let started = Instant::now();
        // A tar-family layer also gets its member table and gzip checkpoints, listed
        // from the same stream.
        let list = |rx| crate::archive::remote::index_stream(&layer.digest, layer.size, rx);
        let side = crate::names::archive::tar_family(&layer.media_type)
            .is_some()
            .then_some(&list as build::SideIndex<'_>);
        let (index, archive) = build::index_layer(source, repo, layer, args.block_size, side)
            .map_err(|e| format!("{what}: {e}"))?;
        let took = started.elapsed().as_secs_f64();
        eprintln!(
            "{}: {} bytes indexed in {took:.2} s ({:.0} MiB/s): index {} ({} bytes)",
            layer.digest,
            layer.size,
            layer.size as f64 / (1 << 20) as f64 / took.max(1e-9),
            index.digest,
            index.bytes.len()
        );
        if let Some(a) = &archive {
            eprintln!(
                "{}: archive index {} ({} bytes)",
                layer.digest,
                Digest::of(&a.bytes),
                a.bytes.len()
            );
        }
        indexed.push(Indexed {
            layer: layer.digest.clone(),
            index,
            archive,
        });
    }
    if indexed.is_empty() {
        return Err(format!("{what} has no data layers to index"));
    }
    let push = |e: crate::error::SourceError| e.to_string();
    for i in &indexed {
        dest.put_blob(&i.index.digest, &i.index.bytes)
            .map_err(push)?;
        if let Some(a) = &i.archive {
            dest.put_blob(&Digest::of(&a.bytes), &a.bytes)
                .map_err(push)?;
        }
    }
    let media_type = m.media_type.as_deref().unwrap_or(OCI_MANIFEST);
    if args.embed {
        let bytes = attach::embed(&fetched.bytes, &indexed).map_err(|e| format!("{what}: {e}"))?;
        let tag = args.tag.as_deref().or(match reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        });
        return dest.put_manifest(tag, media_type, &bytes).map_err(push);
    }
    dest.put_blob(&Digest::of(EMPTY_CONFIG), EMPTY_CONFIG)
        .map_err(push)?;
    let subject = descriptor(media_type, &fetched.digest, fetched.bytes.len() as u64);
    let manifest = attach::referrer_manifest(subject, &indexed);
    dest.put_referrer(&fetched.digest, &manifest).map_err(push)
}
