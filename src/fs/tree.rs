//! The namespace: an inode table mapping registry → repositories → tags → manifests →
//! files, built lazily as the kernel looks names up, with TTLs for what can change (tags,
//! listings) and none for what cannot (anything addressed by digest).
//!
//! Only a definite answer makes a name absent: a 404, or a successful listing without the
//! name (and then the registry is asked for the name directly, since listings age). When the
//! registry cannot answer, a name seen before keeps its last known meaning (stale-if-error)
//! and a name never seen fails with the error. A tag directory costs no request until it is
//! entered; a tag found to have moved gets a new inode, and the kernel is told to forget
//! the old entry (see [`Tree::set_invalidator`]).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;

use lru::LruCache;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::BlobRef;
use crate::error::SourceError;
use crate::fs::error::FsError;
use crate::names::{self, CONFIG_FILE, MANIFEST_FILE};
use crate::oci::{Descriptor, Digest, ImageManifest, Manifest, ANNOTATION_CREATED};
use crate::read::index::{is_index_layer, IndexHint};
use crate::source::{
    valid_repo_name, valid_tag, FetchedManifest, Hosts, Reference, Source, VecSink,
};

pub use crate::fs::inodes::Ino;
use crate::fs::inodes::Inodes;
pub const ROOT: Ino = 1;
/// `.orasfs/` at the root, hidden from listings.
pub const CONTROL_DIR: Ino = 2;
pub const CONTROL_NAME: &str = ".orasfs";

/// What the mount root shows.
#[derive(Debug, Clone)]
pub enum RootKind {
    /// Repositories (and their namespaces) of a registry.
    Registry,
    /// The tags of one repository.
    Repository(String),
    /// One artifact's files.
    Artifact(String, Reference),
    /// Any registry by host name: `HOST/REPO/TAG/...`; lists the hosts visited.
    Hosts,
}

/// One node of the tree.
#[derive(Debug, Clone)]
pub enum Node {
    /// The multi-registry root: one directory per registry host.
    Hosts,
    /// Repositories under `prefix` and, when `prefix` is itself a repository, its tags.
    Namespace { prefix: String },
    /// Only the tags of one repository.
    Repo { repo: String },
    /// A tag: a directory showing its manifest's content, fetched when first entered.
    Tag(Arc<TagNode>),
    /// An image manifest's files.
    Image(Arc<ManifestNode>),
    /// An index: one subdirectory per entry.
    Index(Arc<ManifestNode>),
    /// A directory made by titles with `/` inside an image.
    SubDir { manifest: Arc<ManifestNode> },
    /// `.referrers/` in a manifest directory: one subdirectory per artifact whose
    /// `subject` is that manifest, as the source lists them.
    Referrers(Arc<ManifestNode>),
    /// A layer or config blob.
    Blob {
        blob: BlobRef,
        desc: Arc<Descriptor>,
        mtime: SystemTime,
        /// Where a data layer's block index may be found (none for configs).
        index: Option<IndexHint>,
    },
    /// A tar-family layer shown unpacked; its content is listed by [`crate::archive`].
    Archive {
        blob: BlobRef,
        desc: Arc<Descriptor>,
        mtime: SystemTime,
        /// Where `orasfs index` may have published its member table.
        hint: crate::archive::remote::ArchiveHint,
    },
    /// `.orasfs/` at the mount root: not listed, reachable by name.
    ControlDir,
    /// `.orasfs/stats.json`: the mount's counters, produced when opened.
    StatsFile,
    /// Bytes held in memory (the manifest itself).
    Inline {
        bytes: Arc<Vec<u8>>,
        digest: Digest,
        media_type: String,
        mtime: SystemTime,
    },
}

/// A tag directory. Its content is fixed once fetched: a tag that moves gets a new inode.
#[derive(Debug)]
pub struct TagNode {
    pub repo: String,
    pub tag: String,
    content: OnceLock<Arc<ManifestNode>>,
}

impl TagNode {
    fn new(repo: &str, tag: &str) -> Self {
        Self {
            repo: repo.to_string(),
            tag: tag.to_string(),
            content: OnceLock::new(),
        }
    }

    /// The manifest shown, once the directory has been entered.
    pub fn manifest(&self) -> Option<&Arc<ManifestNode>> {
        self.content.get()
    }
}

/// A manifest shown as a directory.
#[derive(Debug)]
pub struct ManifestNode {
    pub repo: String,
    pub digest: Digest,
    /// How it was reached: a tag, or a digest.
    pub reference: Reference,
    pub fetched: FetchedManifest,
    pub mtime: SystemTime,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        !matches!(
            self,
            Node::Blob { .. } | Node::Inline { .. } | Node::StatsFile
        )
    }
}

/// Settings of the namespace.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    /// How long tag resolutions and listings are trusted.
    pub metadata_ttl: Duration,
    /// Which archive layers are also shown as directories.
    pub unpack: crate::archive::UnpackMode,
    /// The mtime of what has no time of its own: directories of names (registry,
    /// namespaces, repositories, tags) and content without a creation time.
    pub epoch: SystemTime,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            metadata_ttl: Duration::from_secs(60),
            unpack: Default::default(),
            epoch: fixed_epoch(),
        }
    }
}

/// The fixed mtime: `$SOURCE_DATE_EPOCH` (seconds since 1970) when set, else 1970-01-01.
pub fn fixed_epoch() -> SystemTime {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// How long a failed catalog fetch is remembered, so that lookups do not each wait for it.
const CATALOG_FAILURE_MEMORY: Duration = Duration::from_secs(5);
/// Without a catalog, names this many components deep (after the host in a multi-registry
/// mount) that are not repositories are shown as namespaces: the kernel looks up `org`
/// before `org/repo`, and only a catalog could say whether `org` leads anywhere.
pub const PROVISIONAL_DEPTH: usize = 2;
/// Manifests (and config times) kept by digest for reuse; each directory showing one also
/// holds its own.
const MAX_MANIFESTS: NonZeroUsize = match NonZeroUsize::new(if cfg!(test) { 64 } else { 4096 }) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};
/// Attempts at a lookup whose inode is dropped before the kernel is given it.
const MAX_LOOKUP_TRIES: usize = 8;
/// Definite "no" answers kept before those past the TTL are dropped.
const MAX_REMEMBERED_NO: usize = 10_000;
/// Tags revalidated at once when a directory of entered tags is listed after the TTL.
const PARALLEL_CHECKS: usize = 8;
/// Config blobs up to this size are read for their `created` time.
const MAX_CONFIG_FOR_TIME: u64 = 1 << 20;

/// A listing and when it was fetched.
type Listing = (Instant, Arc<Vec<String>>);

/// The catalog of one scope: the last answer (`None` when the source has none) and the
/// last failure, each with when it happened.
#[derive(Default)]
struct CatalogListing {
    ok: Option<(Instant, Option<Arc<Vec<String>>>)>,
    failed: Option<(Instant, String, bool)>,
}

/// What a path below a registry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    /// A repository (it may also hold namespaces).
    Repo,
    /// Only a namespace: repositories are below it.
    Namespace,
    Absent,
}

/// A definite "no" from the source.
#[derive(Debug, Clone)]
enum No {
    /// 404: not there.
    NotFound,
    /// 401/403 (registry, hint): not for us.
    Refused(String, String),
}

impl No {
    /// The "no" in `e`, if it is one.
    fn of(e: &SourceError) -> Option<No> {
        match e {
            SourceError::NotFound(_) => Some(No::NotFound),
            SourceError::Unauthorized { registry, hint } => {
                Some(No::Refused(registry.clone(), hint.clone()))
            }
            _ => None,
        }
    }

    fn error(&self, what: &str) -> FsError {
        match self {
            No::NotFound => FsError::Source(SourceError::NotFound(what.to_string())),
            No::Refused(registry, hint) => FsError::Source(SourceError::Unauthorized {
                registry: registry.clone(),
                hint: hint.clone(),
            }),
        }
    }
}

/// Tells the kernel to forget the entry `name` in directory `parent`.
pub type Invalidator = Box<dyn Fn(Ino, &str) + Send + Sync>;
/// A manifest's referrers, named, and when they were listed.
type ReferrerListing = (Instant, Arc<Vec<(String, Descriptor)>>);

/// The inode table and the metadata caches behind it.
pub struct Tree {
    source: Arc<dyn Source>,
    cfg: TreeConfig,
    /// The inode table; a directory's children are the names known so far (all of them
    /// for directories whose content is fixed by a manifest).
    nodes: Inodes<Node>,
    /// Manifests by digest, the most recently used kept (a moved tag leaves its old one).
    manifests: Mutex<LruCache<Digest, FetchedManifest>>,
    tags: Mutex<HashMap<String, Listing>>,
    resolved: Mutex<HashMap<(String, String), (Instant, Digest)>>,
    /// Catalogs by scope: the registry host in a multi-registry mount, else "".
    catalog: Mutex<HashMap<String, CatalogListing>>,
    /// Definite "no" answers to a direct question, and when: paths that are not
    /// repositories (`path`), and tags missing from their repository (`repo:tag`).
    absent: Mutex<HashMap<String, (Instant, No)>>,
    /// `created` of config blobs by digest (`None`: it has none).
    created: Mutex<LruCache<Digest, Option<SystemTime>>>,
    /// Serialises filling a tag directory's children.
    filling: Mutex<()>,
    invalidator: OnceLock<Invalidator>,
    /// Whether the root is the multi-registry root (paths start with a host).
    multi: bool,
    warned: Mutex<HashSet<String>>,
    /// Referrer listings by (repository, subject digest).
    referrers: Mutex<HashMap<(String, Digest), ReferrerListing>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The key under which a referrer that does not name `m` as its subject is remembered.
fn referrer_key(m: &ManifestNode, referrer: &Descriptor) -> String {
    format!("referrer:{}:{}", m.digest, referrer.digest)
}

/// Parse an RFC 3339 `created` annotation.
fn parse_created(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(s).ok())
}

impl Tree {
    /// The registries by host, in a multi-registry mount.
    fn hosts(&self) -> Option<&dyn Hosts> {
        if self.multi {
            self.source.hosts()
        } else {
            None
        }
    }

    /// Build the tree; for an artifact root the manifest is fetched now, so a missing tag
    /// fails before mounting.
    pub fn new(source: Arc<dyn Source>, root: RootKind, cfg: TreeConfig) -> Result<Self, FsError> {
        if matches!(root, RootKind::Hosts) && source.hosts().is_none() {
            return Err(FsError::Source(SourceError::Unsupported(format!(
                "{} does not reach registries by host name",
                source.name()
            ))));
        }
        let tree = Self {
            source,
            cfg,
            nodes: Inodes::new(),
            manifests: Mutex::new(LruCache::new(MAX_MANIFESTS)),
            tags: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            catalog: Mutex::new(HashMap::new()),
            absent: Mutex::new(HashMap::new()),
            created: Mutex::new(LruCache::new(MAX_MANIFESTS)),
            filling: Mutex::new(()),
            invalidator: OnceLock::new(),
            multi: matches!(root, RootKind::Hosts),
            warned: Mutex::new(HashSet::new()),
            referrers: Mutex::new(HashMap::new()),
        };
        let root_node = match root {
            RootKind::Registry => Node::Namespace {
                prefix: String::new(),
            },
            RootKind::Hosts => Node::Hosts,
            RootKind::Repository(repo) => Node::Repo { repo },
            RootKind::Artifact(repo, reference) => {
                let fetched = tree.fetch_manifest(&repo, &reference)?;
                tree.manifest_node(&repo, reference, fetched)?
            }
        };
        let root = tree.nodes.add_fixed(0, root_node);
        // The control directory is an orphan child of the root: it has the root as its
        // parent but is not in the root's listing.
        let control = tree.nodes.add_fixed(ROOT, Node::ControlDir);
        debug_assert_eq!((root, control), (ROOT, CONTROL_DIR));
        tree.add(CONTROL_DIR, "stats.json", Node::StatsFile);
        let root = tree.node(ROOT)?;
        tree.fill_fixed(ROOT, &root);
        Ok(tree)
    }

    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// The mtime of what has no time of its own.
    pub fn epoch(&self) -> SystemTime {
        self.cfg.epoch
    }

    /// Set how the kernel is told to forget an entry (FUSE's `inval_entry`); called when
    /// a tag moved and on [`Tree::drop_metadata`]. Must not block: it is called while a
    /// FUSE request is being answered.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
    }

    fn invalidate(&self, parent: Ino, name: &str) {
        if let Some(f) = self.invalidator.get() {
            f(parent, name);
        }
    }

    /// The node behind an inode.
    pub fn node(&self, ino: Ino) -> Result<Node, FsError> {
        self.nodes.node(ino).ok_or(FsError::NotFound)
    }

    pub fn parent(&self, ino: Ino) -> Ino {
        self.nodes.parent(ino).unwrap_or(ROOT)
    }

    /// The kernel forgets `n` lookups of `ino` (FUSE `forget`): an inode no name leads
    /// to any more is dropped once none is left.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.nodes.forget(ino, n);
    }

    /// How many inodes the table holds.
    pub fn inode_count(&self) -> usize {
        self.nodes.len()
    }

    /// How many manifests are kept by digest.
    pub fn manifest_count(&self) -> usize {
        lock(&self.manifests).len()
    }

    fn warn_once(&self, key: String, msg: impl FnOnce() -> String) {
        if lock(&self.warned).insert(key) {
            log::warn!("{}", msg());
        }
    }

    /// `name` in `parent`: the child already there, else a new inode for `node`.
    /// `None` when `parent` itself was dropped meanwhile.
    fn add(&self, parent: Ino, name: &str, node: Node) -> Option<Ino> {
        self.nodes.add_or_keep(parent, name, node, |_| true)
    }

    /// `name` in `parent`: the child already there if `same` accepts it, else a new inode
    /// for `node` in its place. Atomic, so racing lookups of one name agree.
    fn add_unless(
        &self,
        parent: Ino,
        name: &str,
        node: Node,
        same: impl FnOnce(&Node) -> bool,
    ) -> Result<Ino, FsError> {
        self.nodes
            .add_or_keep(parent, name, node, same)
            .ok_or(FsError::NotFound)
    }

    fn child(&self, parent: Ino, name: &str) -> Option<Ino> {
        self.nodes.child(parent, name)
    }

    fn fetch_manifest(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<FetchedManifest, FsError> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => {
                let key = (repo.to_string(), t.clone());
                let fresh = lock(&self.resolved)
                    .get(&key)
                    .filter(|(at, _)| at.elapsed() < self.cfg.metadata_ttl)
                    .map(|(_, d)| d.clone());
                match fresh {
                    Some(d) => d,
                    None => match self.source.manifest(repo, reference) {
                        Ok(m) => {
                            lock(&self.resolved).insert(key, (Instant::now(), m.digest.clone()));
                            lock(&self.manifests).put(m.digest.clone(), m.clone());
                            return Ok(m);
                        }
                        Err(e) if e.is_transient() => {
                            self.stale_resolution(repo, t).ok_or(FsError::Source(e))?
                        }
                        Err(e) => return Err(e.into()),
                    },
                }
            }
        };
        if let Some(m) = lock(&self.manifests).get(&digest) {
            return Ok(m.clone());
        }
        let m = self.source.manifest(repo, &Reference::Digest(digest))?;
        lock(&self.manifests).put(m.digest.clone(), m.clone());
        Ok(m)
    }

    /// The digest a tag was last known to point at, however old.
    fn stale_resolution(&self, repo: &str, tag: &str) -> Option<Digest> {
        lock(&self.resolved)
            .get(&(repo.to_string(), tag.to_string()))
            .map(|(_, d)| d.clone())
    }

    /// The digest a tag points at: as resolved within the TTL, else asked again (a `HEAD`
    /// where the source has one); the last known one while the source cannot answer.
    fn tag_digest(&self, repo: &str, tag: &str) -> Result<Digest, FsError> {
        let key = (repo.to_string(), tag.to_string());
        if let Some((at, d)) = lock(&self.resolved).get(&key) {
            if at.elapsed() < self.cfg.metadata_ttl {
                return Ok(d.clone());
            }
        }
        let asked = match self.source.tag_digest(repo, tag) {
            Ok(Some(d)) => Ok(d),
            Ok(None) => self
                .source
                .manifest(repo, &Reference::Tag(tag.to_string()))
                .map(|m| {
                    lock(&self.manifests).put(m.digest.clone(), m.clone());
                    m.digest
                }),
            Err(e) => Err(e),
        };
        match asked {
            Ok(d) => {
                lock(&self.resolved).insert(key, (Instant::now(), d.clone()));
                Ok(d)
            }
            Err(e) if e.is_transient() => {
                self.stale_resolution(repo, tag).ok_or(FsError::Source(e))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A manifest as a directory node. Its mtime is a function of its content: the
    /// `org.opencontainers.image.created` annotation, else the config blob's `created`,
    /// else the fixed epoch.
    fn manifest_node(
        &self,
        repo: &str,
        reference: Reference,
        fetched: FetchedManifest,
    ) -> Result<Node, FsError> {
        let annotated = fetched
            .manifest
            .annotations()
            .get(ANNOTATION_CREATED)
            .and_then(|s| parse_created(s));
        let mtime = match (annotated, &fetched.manifest) {
            (Some(t), _) => t,
            (None, Manifest::Image(image)) => self
                .config_created(repo, &image.config)?
                .unwrap_or(self.cfg.epoch),
            (None, Manifest::Index(_)) => self.cfg.epoch,
        };
        let m = Arc::new(ManifestNode {
            repo: repo.to_string(),
            digest: fetched.digest.clone(),
            reference,
            mtime,
            fetched,
        });
        Ok(match &m.fetched.manifest {
            Manifest::Image(_) => Node::Image(m),
            Manifest::Index(_) => Node::Index(m),
        })
    }

    /// The `created` time in a JSON config blob (image configs have one), read once per
    /// digest and verified; `None` for configs without one, empty or not JSON.
    fn config_created(
        &self,
        repo: &str,
        config: &Descriptor,
    ) -> Result<Option<SystemTime>, FsError> {
        if config.size <= 2
            || config.size > MAX_CONFIG_FOR_TIME
            || !config.media_type.contains("json")
        {
            return Ok(None);
        }
        if let Some(t) = lock(&self.created).get(&config.digest) {
            return Ok(*t);
        }
        let mut sink = VecSink::with_limit(config.size);
        self.source
            .fetch_blob(repo, &config.digest, config.size, None, &mut sink)?;
        config
            .digest
            .verify(&sink.bytes)
            .map_err(|source| SourceError::Oci {
                what: format!("config of {repo}"),
                source,
            })?;
        let created = serde_json::from_slice::<serde_json::Value>(&sink.bytes)
            .ok()
            .and_then(|v| parse_created(v.get("created")?.as_str()?));
        lock(&self.created).put(config.digest.clone(), created);
        Ok(created)
    }

    /// Create the children of a directory whose content is fixed by an image manifest,
    /// and the `.referrers/` of images and indexes — reachable by name but not listed, like
    /// `.orasfs/`, so tree walks (`find`, `cp -r`, `du`) do not fetch every manifest's
    /// referrers. (Index entries need a fetch each, so they are added on lookup.)
    fn fill_fixed(&self, ino: Ino, node: &Node) {
        if let Node::Image(m) | Node::Index(m) = node {
            if let Manifest::Image(image) = &m.fetched.manifest {
                self.fill_image(ino, m, image);
            }
            self.add(ino, names::REFERRERS_DIR, Node::Referrers(m.clone()));
        }
    }

    fn fill_image(&self, ino: Ino, m: &Arc<ManifestNode>, image: &ImageManifest) {
        let blob = |d: &Descriptor, index: Option<IndexHint>| Node::Blob {
            blob: BlobRef {
                repo: m.repo.clone(),
                digest: d.digest.clone(),
                size: d.size,
            },
            desc: Arc::new(d.clone()),
            mtime: m.mtime,
            index,
        };
        self.add(
            ino,
            MANIFEST_FILE,
            Node::Inline {
                bytes: m.fetched.bytes.clone(),
                digest: m.digest.clone(),
                media_type: m.fetched.manifest.media_type().to_string(),
                mtime: m.mtime,
            },
        );
        self.add(ino, CONFIG_FILE, blob(&image.config, None));
        let helm = self.helm_chart_name(m, image);
        let namings =
            crate::names::archive::layer_namings(&image.layers, self.cfg.unpack, helm.as_deref());
        for (placement, layer) in names::place_layers_named(&image.layers, &namings)
            .into_iter()
            .zip(&image.layers)
        {
            // Block indexes serve the layers they index; they are not files of their own.
            if is_index_layer(layer) || crate::archive::remote::is_archive_index(layer) {
                continue;
            }
            if let Some((title, why)) = &placement.refused {
                self.warn_once(format!("{}:{title}", m.digest), || {
                    format!(
                        "{}/{}: layer title {title:?} refused ({why}); shown as {}",
                        m.repo,
                        m.reference,
                        placement.path.join("/")
                    )
                });
            }
            let Some((file, dirs)) = placement.path.split_last() else {
                continue;
            };
            let Some(dir) = self.subdirs(ino, m, dirs) else {
                return;
            };
            let hint = IndexHint::for_layer(&m.repo, &m.digest, layer, &image.layers);
            self.add(dir, file, blob(layer, Some(hint)));
            if let Some(path) = &placement.dir {
                self.add_archive_dir(ino, m, path, layer, &image.layers);
            }
        }
    }

    /// The directory `dirs` below `ino` inside a manifest's directory, made as needed
    /// (titles with `/`); `None` when `ino` was dropped meanwhile.
    fn subdirs(&self, ino: Ino, m: &Arc<ManifestNode>, dirs: &[String]) -> Option<Ino> {
        dirs.iter().try_fold(ino, |dir, d| {
            let sub = Node::SubDir {
                manifest: m.clone(),
            };
            self.add(dir, d, sub)
        })
    }

    /// The directory showing an archive layer unpacked, at `path` below `ino`.
    fn add_archive_dir(
        &self,
        ino: Ino,
        m: &Arc<ManifestNode>,
        path: &[String],
        layer: &Descriptor,
        layers: &[Descriptor],
    ) {
        let Some((name, dirs)) = path.split_last() else {
            return;
        };
        let Some(dir) = self.subdirs(ino, m, dirs) else {
            return;
        };
        let node = Node::Archive {
            blob: BlobRef {
                repo: m.repo.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
            },
            desc: Arc::new(layer.clone()),
            mtime: m.mtime,
            hint: crate::archive::remote::ArchiveHint::for_layer(&m.repo, &m.digest, layer, layers),
        };
        self.add(dir, name, node);
    }

    /// `NAME-VERSION` of a Helm chart, from its config blob (fetched and verified here;
    /// configs are small). `None` for anything else or a config that cannot be read.
    fn helm_chart_name(&self, m: &ManifestNode, image: &ImageManifest) -> Option<String> {
        use crate::names::archive::{HELM_CHART, HELM_CONFIG};
        let c = &image.config;
        if c.media_type != HELM_CONFIG || !image.layers.iter().any(|l| l.media_type == HELM_CHART) {
            return None;
        }
        const MAX_CONFIG: u64 = 1 << 20;
        let mut sink = crate::source::VecSink::with_limit(c.size.min(MAX_CONFIG));
        let fetched = self
            .source
            .fetch_blob(&m.repo, &c.digest, c.size, None, &mut sink)
            .map_err(|e| e.to_string())
            .and_then(|_| match Digest::of(&sink.bytes) == c.digest {
                true => Ok(()),
                false => Err("content does not match its digest".into()),
            });
        if let Err(e) = fetched {
            self.warn_once(format!("helm:{}", c.digest), || {
                format!(
                    "{}/{}: Helm chart config {}: {e}",
                    m.repo, m.reference, c.digest
                )
            });
            return None;
        }
        crate::names::archive::helm_chart_name(&sink.bytes)
    }

    /// Look up `name` in directory `parent` for the kernel, which then holds the inode
    /// until it forgets it ([`Tree::forget`]). When the source cannot answer, a name seen
    /// before keeps its last known meaning.
    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Ino, FsError> {
        // The inode found may be dropped before it is held (a tag replaced and its old
        // directory forgotten in between); then the name is looked up again.
        for _ in 0..MAX_LOOKUP_TRIES {
            let ino = self.find(parent, name)?;
            if self.nodes.hold(ino) {
                return Ok(ino);
            }
        }
        Err(FsError::NotFound)
    }

    /// What `name` in `parent` is now.
    fn find(&self, parent: Ino, name: &str) -> Result<Ino, FsError> {
        let node = self.node(parent)?;
        if !node.is_dir() {
            return Err(FsError::NotDir);
        }
        if parent == ROOT && name == CONTROL_NAME {
            return Ok(CONTROL_DIR);
        }
        let found = match &node {
            Node::Image(m) => self.lookup_image(parent, m, name),
            Node::SubDir { .. } | Node::ControlDir => {
                self.child(parent, name).ok_or(FsError::NotFound)
            }
            Node::Index(m) => self.lookup_index(parent, m, name),
            Node::Tag(t) => {
                let m = self.tag_content(parent, t)?;
                match &m.fetched.manifest {
                    Manifest::Image(_) => self.lookup_image(parent, &m, name),
                    Manifest::Index(_) => self.lookup_index(parent, &m, name),
                }
            }
            Node::Repo { repo } => self.lookup_in_repo(parent, repo, name, false),
            Node::Namespace { prefix } => self.lookup_namespace(parent, prefix, name),
            Node::Hosts => self.lookup_host(parent, name),
            Node::Referrers(m) => self.lookup_referrer(parent, m, name),
            // Archive contents are looked up by `fs` in the archive's own table.
            Node::Archive { .. } => Err(FsError::NotFound),
            Node::Blob { .. } | Node::Inline { .. } | Node::StatsFile => Err(FsError::NotDir),
        };
        match found {
            Err(e) if e.is_outage() => self.child(parent, name).ok_or(e),
            other => other,
        }
    }

    /// A name in an image manifest's directory: its files, and (looked up, not listed)
    /// `sha256:<hex>` for any of its layers or its config, the raw blob by digest, also
    /// when the layer is shown under another name or unpacked.
    fn lookup_image(&self, parent: Ino, m: &ManifestNode, name: &str) -> Result<Ino, FsError> {
        if let Some(c) = self.child(parent, name) {
            return Ok(c);
        }
        let (Some(digest), Manifest::Image(image)) = (
            name.starts_with("sha256:")
                .then(|| Digest::parse(name).ok())
                .flatten(),
            &m.fetched.manifest,
        ) else {
            return Err(FsError::NotFound);
        };
        let layer = image.layers.iter().find(|l| l.digest == digest);
        let Some(desc) = layer.or((image.config.digest == digest).then_some(&image.config)) else {
            return Err(FsError::NotFound);
        };
        let index = layer.map(|l| IndexHint::for_layer(&m.repo, &m.digest, l, &image.layers));
        let node = Node::Blob {
            blob: BlobRef {
                repo: m.repo.clone(),
                digest: desc.digest.clone(),
                size: desc.size,
            },
            desc: Arc::new(desc.clone()),
            mtime: m.mtime,
            index,
        };
        self.add(parent, name, node).ok_or(FsError::NotFound)
    }

    /// The manifest a tag directory shows, fetched (and its children made) when the
    /// directory is first entered.
    fn tag_content(&self, ino: Ino, t: &TagNode) -> Result<Arc<ManifestNode>, FsError> {
        if let Some(m) = t.content.get() {
            return Ok(m.clone());
        }
        let reference = Reference::Tag(t.tag.clone());
        let fetched = self.fetch_manifest(&t.repo, &reference)?;
        let node = self.manifest_node(&t.repo, reference, fetched)?;
        let (Node::Image(m) | Node::Index(m)) = &node else {
            return Err(FsError::NotFound);
        };
        let _filling = lock(&self.filling);
        if let Some(m) = t.content.get() {
            return Ok(m.clone());
        }
        self.fill_fixed(ino, &node);
        let _ = t.content.set(m.clone());
        Ok(m.clone())
    }

    /// Enter a tag directory now (for attributes that need its manifest); other nodes are
    /// left as they are.
    pub fn enter(&self, ino: Ino) -> Result<(), FsError> {
        if let Node::Tag(t) = self.node(ino)? {
            self.tag_content(ino, &t)?;
        }
        Ok(())
    }

    fn lookup_index(&self, parent: Ino, m: &Arc<ManifestNode>, name: &str) -> Result<Ino, FsError> {
        if let Some(c) = self.child(parent, name) {
            return Ok(c);
        }
        let Manifest::Index(index) = &m.fetched.manifest else {
            return Err(FsError::NotFound);
        };
        let names = names::index_entry_names(&index.manifests);
        let pos = names
            .iter()
            .position(|n| n == name)
            .ok_or(FsError::NotFound)?;
        let entry = &index.manifests[pos];
        let reference = Reference::Digest(entry.digest.clone());
        // An index that names itself (directly or in a cycle) just shows the same content
        // one level down; each level costs a lookup, so no loop runs unbounded.
        let fetched = self.fetch_manifest(&m.repo, &reference)?;
        self.add_manifest(parent, name, &m.repo, reference, fetched)
    }

    /// A directory showing a manifest reached by digest: the one already at `name` when it
    /// shows the same digest, else a new one. Filled whichever it is, so that a lookup
    /// racing the one that made it does not answer before its files are there.
    fn add_manifest(
        &self,
        parent: Ino,
        name: &str,
        repo: &str,
        reference: Reference,
        fetched: FetchedManifest,
    ) -> Result<Ino, FsError> {
        let digest = fetched.digest.clone();
        let node = self.manifest_node(repo, reference, fetched)?;
        let ino = self.add_unless(
            parent,
            name,
            node.clone(),
            |n| matches!(n, Node::Image(m) | Node::Index(m) if m.digest == digest),
        )?;
        self.fill_fixed(ino, &node);
        Ok(ino)
    }

    /// The referrers of a manifest, named, from a listing no older than the TTL.
    fn referrers_of(&self, m: &ManifestNode) -> Result<Arc<Vec<(String, Descriptor)>>, FsError> {
        let key = (m.repo.clone(), m.digest.clone());
        if let Some((at, r)) = lock(&self.referrers).get(&key) {
            if at.elapsed() < self.cfg.metadata_ttl {
                return Ok(r.clone());
            }
        }
        let found = self.source.referrers(&m.repo, &m.digest)?;
        let list = Arc::new(names::referrer_names(&found));
        lock(&self.referrers).insert(key, (Instant::now(), list.clone()));
        Ok(list)
    }

    /// A referrer of `m` by name; shown only if its manifest names `m` as its subject.
    fn lookup_referrer(
        &self,
        parent: Ino,
        m: &Arc<ManifestNode>,
        name: &str,
    ) -> Result<Ino, FsError> {
        let list = self.referrers_of(m)?;
        let (_, desc) = list
            .iter()
            .find(|(n, _)| n == name)
            .ok_or(FsError::NotFound)?;
        if let Some(c) = self.child(parent, name) {
            if let Ok(Node::Image(r) | Node::Index(r)) = self.node(c) {
                if r.digest == desc.digest {
                    return Ok(c);
                }
            }
        }
        let reference = Reference::Digest(desc.digest.clone());
        let fetched = self.fetch_manifest(&m.repo, &reference)?;
        let subject = serde_json::from_slice::<serde_json::Value>(&fetched.bytes)
            .ok()
            .and_then(|v| Some(v.get("subject")?.get("digest")?.as_str()?.to_string()));
        if subject.as_deref() != Some(m.digest.to_string().as_str()) {
            self.warn_once(referrer_key(m, desc), || {
                format!(
                    "{}@{}: listed as a referrer of {}, but its subject is {}; not shown",
                    m.repo,
                    desc.digest,
                    m.digest,
                    subject.as_deref().unwrap_or("missing")
                )
            });
            return Err(FsError::NotFound);
        }
        self.add_manifest(parent, name, &m.repo, reference, fetched)
    }

    /// Tags of a repository, from a listing no older than the TTL; the last listing while
    /// the source cannot answer.
    pub fn tags(&self, repo: &str) -> Result<Arc<Vec<String>>, FsError> {
        let stale = match lock(&self.tags).get(repo) {
            Some((at, t)) if at.elapsed() < self.cfg.metadata_ttl => return Ok(t.clone()),
            Some((_, t)) => Some(t.clone()),
            None => None,
        };
        let mut t = match self.source.tags(repo) {
            Ok(t) => t,
            Err(e) if e.is_transient() => return stale.ok_or(FsError::Source(e)),
            Err(e) => {
                if let Some(no) = No::of(&e) {
                    lock(&self.tags).remove(repo);
                    self.remember_no(repo, &no);
                }
                return Err(e.into());
            }
        };
        t.retain(|t| valid_tag(t));
        t.sort();
        t.dedup();
        let t = Arc::new(t);
        lock(&self.tags).insert(repo.to_string(), (Instant::now(), t.clone()));
        lock(&self.absent).remove(repo);
        Ok(t)
    }

    /// The catalog that covers `prefix`: the registry's, or in a multi-registry mount the
    /// catalog of the host `prefix` starts with (entries then read `host/repo`). While the
    /// source cannot answer, the last one; a failure is remembered for a few seconds.
    fn catalog(&self, prefix: &str) -> Result<Option<Arc<Vec<String>>>, FsError> {
        let scope = match self.hosts() {
            Some(_) => prefix.split('/').next().unwrap_or(""),
            None => "",
        };
        let failure = |detail: &str, transient: bool| {
            let what = format!("catalog of {}", self.source.name());
            FsError::Source(if transient {
                SourceError::Unreachable {
                    target: what,
                    detail: detail.to_string(),
                }
            } else {
                SourceError::Protocol {
                    what,
                    detail: detail.to_string(),
                }
            })
        };
        let stale = {
            let map = lock(&self.catalog);
            let entry = map.get(scope);
            let ok = entry.and_then(|e| e.ok.clone());
            if let Some((at, c)) = &ok {
                if at.elapsed() < self.cfg.metadata_ttl {
                    return Ok(c.clone());
                }
            }
            let remembered = self.cfg.metadata_ttl.min(CATALOG_FAILURE_MEMORY);
            if let Some((at, detail, transient)) = entry.and_then(|e| e.failed.as_ref()) {
                if at.elapsed() < remembered {
                    return match ok {
                        Some((_, c)) if *transient => Ok(c),
                        _ => Err(failure(detail, *transient)),
                    };
                }
            }
            ok
        };
        let fetched = match self.hosts() {
            Some(m) => m.catalog_of(scope),
            None => self.source.catalog(),
        };
        let mut map = lock(&self.catalog);
        let entry = map.entry(scope.to_string()).or_default();
        match fetched {
            Ok(c) => {
                let c = c.map(|mut c| {
                    c.retain(|r| r.is_empty() || self.valid_path(r));
                    c.sort();
                    Arc::new(c)
                });
                entry.ok = Some((Instant::now(), c.clone()));
                entry.failed = None;
                Ok(c)
            }
            Err(e) => {
                let transient = e.is_transient();
                entry.failed = Some((Instant::now(), e.to_string(), transient));
                match stale {
                    Some((_, c)) if transient => Ok(c),
                    _ => Err(e.into()),
                }
            }
        }
    }

    /// Whether `path` may name a repository or namespace (in a multi-registry mount, after
    /// its leading host component).
    fn valid_path(&self, path: &str) -> bool {
        match self.hosts() {
            Some(_) => match path.split_once('/') {
                Some((host, rest)) => crate::source::valid_host(host) && valid_repo_name(rest),
                None => crate::source::valid_host(path),
            },
            None => valid_repo_name(path),
        }
    }

    /// Components of `path` below the registry (after the host in a multi-registry mount).
    fn depth(&self, path: &str) -> usize {
        let n = path.split('/').count();
        match self.hosts() {
            Some(_) => n.saturating_sub(1),
            None => n,
        }
    }

    /// A registry host in the multi-registry root: `EIO` while it cannot be reached, "not
    /// found" when what answers is not a registry.
    fn lookup_host(&self, parent: Ino, name: &str) -> Result<Ino, FsError> {
        let Some(m) = self.hosts() else {
            return Err(FsError::NotFound);
        };
        if !crate::source::valid_host(name) {
            return Err(FsError::NotFound);
        }
        if let Some(c) = self.child(parent, name) {
            return Ok(c);
        }
        if let Err(e) = m.visit(name) {
            self.warn_once(format!("host:{name}"), || format!("registry {name}: {e}"));
            return Err(if e.is_transient() {
                e.into()
            } else {
                FsError::NotFound
            });
        }
        let host = Node::Namespace {
            prefix: name.to_string(),
        };
        self.add(parent, name, host).ok_or(FsError::NotFound)
    }

    /// A tag or `sha256:` digest inside a repository directory. A tag costs no request
    /// while the tag list names it; one missing from the list is asked for directly.
    fn lookup_in_repo(
        &self,
        parent: Ino,
        repo: &str,
        name: &str,
        may_be_namespace: bool,
    ) -> Result<Ino, FsError> {
        if name.starts_with("sha256:") {
            let reference = Reference::Digest(Digest::parse(name).map_err(|_| FsError::NotFound)?);
            let fetched = self.fetch_manifest(repo, &reference)?;
            if let Some(c) = self.child(parent, name) {
                if let Ok(Node::Image(m) | Node::Index(m)) = self.node(c) {
                    if m.digest == fetched.digest {
                        return Ok(c);
                    }
                }
            }
            return self.add_manifest(parent, name, repo, reference, fetched);
        }
        if !valid_tag(name) {
            return Err(FsError::NotFound);
        }
        let listed = self.tags(repo)?.binary_search(&name.to_string()).is_ok();
        if !listed {
            self.confirm_tag(repo, name)?;
        }
        if may_be_namespace {
            self.warn_once(format!("ns:{repo}/{name}"), || {
                format!("{repo}: tag {name:?} hides the namespace {repo}/{name}; the tag wins")
            });
        }
        let mut moved_to = None;
        if let Some(c) = self.child(parent, name) {
            if let Ok(Node::Tag(t)) = self.node(c) {
                let Some(shown) = t.manifest() else {
                    return Ok(c);
                };
                let now = self.tag_digest(repo, name)?;
                if now == shown.digest {
                    return Ok(c);
                }
                // The tag moved: a fresh inode, and the kernel forgets the old entry (it
                // may hold it, and the files below it, for their whole TTL). The old
                // inode is dropped once the kernel has forgotten it.
                log::info!("{repo}:{name} moved from {} to {now}", shown.digest);
                self.invalidate(parent, name);
                moved_to = Some(now);
            }
        }
        let fresh = Node::Tag(Arc::new(TagNode::new(repo, name)));
        // A tag directory another lookup made meanwhile is kept, unless it still shows
        // where the tag was before it moved.
        self.add_unless(parent, name, fresh, |n| match n {
            Node::Tag(t) => match (t.manifest(), &moved_to) {
                (Some(shown), Some(now)) => shown.digest == *now,
                _ => true,
            },
            _ => false,
        })
    }

    /// Ask the source whether a tag missing from the listing exists (pushed since): a
    /// definite "no" is remembered for the TTL like a listing.
    fn confirm_tag(&self, repo: &str, name: &str) -> Result<(), FsError> {
        let key = format!("{repo}:{name}");
        let no = match self.remembered_no(&key) {
            Some(no) => no,
            None => match self.tag_digest(repo, name) {
                Ok(_) => return Ok(()),
                Err(FsError::Source(e)) => {
                    let no = No::of(&e).ok_or(FsError::Source(e))?;
                    self.remember_no(&key, &no);
                    no
                }
                Err(e) => return Err(e),
            },
        };
        Err(match no {
            No::NotFound => FsError::NotFound,
            refused => refused.error(&key),
        })
    }

    /// Remember a definite "no"; answers past the TTL are dropped once there are many, so
    /// a program probing random names does not grow the table without bound.
    fn remember_no(&self, key: &str, no: &No) {
        let mut absent = lock(&self.absent);
        if absent.len() >= MAX_REMEMBERED_NO {
            let ttl = self.cfg.metadata_ttl;
            absent.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        absent.insert(key.to_string(), (Instant::now(), no.clone()));
    }

    /// Whether the source said `key` is absent within the TTL: answers are trusted for the
    /// TTL whether they say yes or no, so repeated lookups of a missing name (a program
    /// probing for side files) do not each reach the registry.
    fn remembered_no(&self, key: &str) -> Option<No> {
        lock(&self.absent)
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.cfg.metadata_ttl)
            .map(|(_, no)| no.clone())
    }

    /// Whether `prefix` (a namespace directory) is itself a repository, so its tags show.
    fn is_repo(&self, prefix: &str) -> Result<bool, FsError> {
        if prefix.is_empty() || (self.multi && !prefix.contains('/')) {
            return Ok(false);
        }
        if lock(&self.tags).contains_key(prefix) {
            return Ok(true);
        }
        if self.remembered_no(prefix).is_some() {
            return Ok(false);
        }
        Ok(self.path_kind(prefix)? == PathKind::Repo)
    }

    /// What `path` is: the catalog says when it names it; otherwise the registry is asked
    /// for the path's tags (a repository answers). Without a catalog that could say, a path
    /// no deeper than [`PROVISIONAL_DEPTH`] that is not a repository is taken as a
    /// namespace.
    fn path_kind(&self, path: &str) -> Result<PathKind, FsError> {
        let catalog = self.catalog(path);
        let under = format!("{path}/");
        if let Ok(Some(c)) = &catalog {
            if c.binary_search(&path.to_string()).is_ok() {
                return Ok(PathKind::Repo);
            }
            if c.iter().any(|r| r.starts_with(&under)) {
                return Ok(PathKind::Namespace);
            }
        }
        let no = match self.remembered_no(path) {
            Some(no) => no,
            None => match self.tags(path) {
                Ok(_) => return Ok(PathKind::Repo),
                Err(FsError::Source(e)) => No::of(&e).ok_or(FsError::Source(e))?,
                Err(e) => return Err(e),
            },
        };
        if lock(&self.tags).keys().any(|r| r.starts_with(&under)) {
            return Ok(PathKind::Namespace);
        }
        match (catalog, no) {
            (Ok(Some(_)), _) => Ok(PathKind::Absent),
            _ if self.depth(path) <= PROVISIONAL_DEPTH => Ok(PathKind::Namespace),
            (_, No::NotFound) => Ok(PathKind::Absent),
            // Refused: the name may be there, just not for us.
            (_, refused) => Err(refused.error(path)),
        }
    }

    fn lookup_namespace(&self, parent: Ino, prefix: &str, name: &str) -> Result<Ino, FsError> {
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        // The prefix's own tags come first: a tag wins over a namespace of the same name.
        if self.is_repo(prefix)? {
            let shadows = self.valid_path(&path)
                && matches!(self.catalog(prefix), Ok(Some(c)) if c
                    .iter()
                    .any(|r| r == &path || r.starts_with(&format!("{path}/"))));
            match self.lookup_in_repo(parent, prefix, name, shadows) {
                Ok(ino) => return Ok(ino),
                Err(FsError::NotFound) | Err(FsError::Source(SourceError::NotFound(_))) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.valid_path(&path) || self.path_kind(&path)? == PathKind::Absent {
            return Err(FsError::NotFound);
        }
        let namespace = Node::Namespace { prefix: path };
        self.add_unless(parent, name, namespace, |n| {
            matches!(n, Node::Namespace { .. })
        })
    }

    /// The entries of a directory: `(name, ino, is_dir)`.
    pub fn list(&self, ino: Ino) -> Result<Vec<(String, Ino, bool)>, FsError> {
        let node = self.node(ino)?;
        let node = match node {
            Node::Tag(t) => match self.tag_content(ino, &t)?.clone() {
                m if matches!(m.fetched.manifest, Manifest::Image(_)) => Node::Image(m),
                m => Node::Index(m),
            },
            other => other,
        };
        let names: Vec<String> = match &node {
            Node::Image(_) | Node::SubDir { .. } | Node::ControlDir => {
                return Ok(self.fixed_children(ino));
            }
            Node::Index(m) => match &m.fetched.manifest {
                Manifest::Index(i) => names::index_entry_names(&i.manifests),
                Manifest::Image(_) => Vec::new(),
            },
            // Tags, namespaces and hosts are all directories: list them without fetching a
            // manifest per entry (a repository may hold thousands of tags).
            Node::Repo { repo } => {
                let tags = listed_tags(&self.tags(repo)?);
                self.revalidate_entered(ino);
                return Ok(self.unresolved(ino, tags));
            }
            Node::Namespace { prefix } => {
                let names = self.namespace_names(prefix)?;
                self.revalidate_entered(ino);
                return Ok(self.unresolved(ino, names));
            }
            Node::Hosts => {
                let hosts = self.hosts().map(|m| m.visited()).unwrap_or_default();
                return Ok(self.unresolved(ino, hosts));
            }
            Node::Referrers(m) => {
                // Referrers already found not to name this subject are left out quietly.
                let list = self.referrers_of(m)?;
                let refused = lock(&self.warned);
                list.iter()
                    .filter(|(_, d)| !refused.contains(&referrer_key(m, d)))
                    .map(|(n, _)| n.clone())
                    .collect()
            }
            Node::Archive { .. } => Vec::new(),
            Node::Tag(_) | Node::Blob { .. } | Node::Inline { .. } | Node::StatsFile => {
                return Err(FsError::NotDir)
            }
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.find(ino, &name) {
                Ok(c) => out.push((name, c, self.node(c).map(|n| n.is_dir()).unwrap_or(true))),
                Err(e) => log::warn!("skipping {name:?} in listing: {e}"),
            }
        }
        Ok(out)
    }

    /// Check, a few at a time, the tags in directory `ino` that were entered and whose
    /// resolution is older than the TTL: `ls -l` looks each entry up in turn, and each
    /// such lookup would otherwise ask the registry on its own, one round trip after
    /// another. Failures are left for the lookups to report.
    fn revalidate_entered(&self, ino: Ino) {
        let children = self.nodes.children(ino);
        let stale: Vec<(String, String)> = {
            let resolved = lock(&self.resolved);
            children
                .iter()
                .filter_map(|(_, _, node)| match node {
                    Node::Tag(t) if t.manifest().is_some() => {
                        let key = (t.repo.clone(), t.tag.clone());
                        let fresh = resolved
                            .get(&key)
                            .is_some_and(|(at, _)| at.elapsed() < self.cfg.metadata_ttl);
                        (!fresh).then_some(key)
                    }
                    _ => None,
                })
                .collect()
        };
        if stale.len() < 2 {
            return;
        }
        let per = stale.len().div_ceil(PARALLEL_CHECKS);
        std::thread::scope(|scope| {
            for part in stale.chunks(per) {
                scope.spawn(move || {
                    for (repo, tag) in part {
                        let _ = self.tag_digest(repo, tag);
                    }
                });
            }
        });
    }

    /// Directory entries for names not looked up yet. An entry carries the inode of a child
    /// already known, else a placeholder number outside the table (high bit set, stable per
    /// name): the kernel looks every name up before use, so only `ls -i` sees it.
    fn unresolved(&self, ino: Ino, names: Vec<String>) -> Vec<(String, Ino, bool)> {
        use std::hash::{Hash, Hasher};
        names
            .into_iter()
            .map(|name| {
                let child = self.child(ino, &name).unwrap_or_else(|| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (ino, &name).hash(&mut h);
                    (1 << 63) | (h.finish() >> 1)
                });
                (name, child, true)
            })
            .collect()
    }

    fn fixed_children(&self, ino: Ino) -> Vec<(String, Ino, bool)> {
        self.nodes
            .children(ino)
            .into_iter()
            // `.referrers/` and blobs by digest are looked up by name only.
            .filter(|(name, _, node)| match node {
                Node::Referrers(_) => false,
                Node::Blob { desc, .. } => !by_digest(name, desc),
                _ => true,
            })
            .map(|(name, c, node)| (name, c, node.is_dir()))
            .collect()
    }

    /// Child names of a namespace: next path components of repositories under it (from
    /// the catalog, or without one from the repositories found so far), plus the tags when
    /// the prefix is itself a repository (tags win over namespaces).
    fn namespace_names(&self, prefix: &str) -> Result<Vec<String>, FsError> {
        let repos: Vec<String> = match self.catalog(prefix)? {
            Some(c) => c.to_vec(),
            None => lock(&self.tags).keys().cloned().collect(),
        };
        let mut names = Vec::new();
        let lead = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        for r in repos.iter() {
            if let Some(rest) = r.strip_prefix(&lead) {
                if let Some(first) = rest.split('/').next().filter(|f| !f.is_empty()) {
                    names.push(first.to_string());
                }
            }
        }
        if self.is_repo(prefix)? {
            names.extend(listed_tags(&self.tags(prefix)?));
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Forget cached tags, listings and tag resolutions (not digest-addressed data), and
    /// tell the kernel to forget every entry they made, so the next lookup asks again.
    pub fn drop_metadata(&self) {
        lock(&self.tags).clear();
        lock(&self.resolved).clear();
        lock(&self.catalog).clear();
        lock(&self.referrers).clear();
        lock(&self.absent).clear();
        let entries = self.nodes.names_in(|n| {
            matches!(
                n,
                Node::Namespace { .. } | Node::Repo { .. } | Node::Hosts | Node::Referrers(_)
            )
        });
        for (parent, name) in entries {
            self.invalidate(parent, &name);
        }
    }
}

/// Tags as listed: those of the referrers tag schema (`sha256-<hex>`) are hidden, since
/// they index other artifacts' referrers; they still resolve by name.
/// Whether a file named `name` is a blob reached by its digest path (`sha256:<hex>`), not
/// by a title that happens to read so.
fn by_digest(name: &str, desc: &Descriptor) -> bool {
    name.starts_with("sha256:") && desc.digest.to_string() == name && desc.title() != Some(name)
}

fn listed_tags(tags: &[String]) -> Vec<String> {
    tags.iter()
        .filter(|t| {
            !(t.len() == 71
                && t.starts_with("sha256-")
                && t[7..].bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .cloned()
        .collect()
}
