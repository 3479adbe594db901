//! The namespace: an inode table mapping registry → repositories → tags → manifests →
//! files, built lazily as the kernel looks names up, with TTLs for what can change (tags,
//! listings) and none for what cannot (anything addressed by digest).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::BlobRef;
use crate::error::{FsError, SourceError};
use crate::names::{self, CONFIG_FILE, MANIFEST_FILE};
use crate::oci::{Descriptor, Digest, ImageManifest, Manifest, ANNOTATION_CREATED};
use crate::read::index::{is_index_layer, IndexHint};
use crate::source::multi::MultiSource;
use crate::source::{valid_repo_name, valid_tag, FetchedManifest, Reference, Source};

pub type Ino = u64;
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
    Hosts(Arc<MultiSource>),
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

struct Entry {
    node: Node,
    parent: Ino,
    /// Children known so far; for fixed directories (manifests) this is complete.
    children: BTreeMap<String, Ino>,
}

/// Settings of the namespace.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    /// How long tag resolutions and listings are trusted.
    pub metadata_ttl: Duration,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            metadata_ttl: Duration::from_secs(60),
        }
    }
}

/// A listing and when it was fetched.
type Listing = (Instant, Arc<Vec<String>>);
/// The catalog (`None` when the source has none) and when it was fetched.
/// A failed fetch is kept too (as its message), so lookups do not ask again within the TTL.
type CatalogListing = (Instant, Result<Option<Arc<Vec<String>>>, String>);
/// A manifest's referrers, named, and when they were listed.
type ReferrerListing = (Instant, Arc<Vec<(String, Descriptor)>>);

/// The inode table and the metadata caches behind it.
pub struct Tree {
    source: Arc<dyn Source>,
    cfg: TreeConfig,
    nodes: RwLock<Vec<Entry>>,
    manifests: Mutex<HashMap<Digest, FetchedManifest>>,
    tags: Mutex<HashMap<String, Listing>>,
    resolved: Mutex<HashMap<(String, String), (Instant, Digest)>>,
    /// Catalogs by scope: the registry host in a multi-registry mount, else "".
    catalog: Mutex<HashMap<String, CatalogListing>>,
    hosts: Option<Arc<MultiSource>>,
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
    /// Build the tree; for an artifact root the manifest is fetched now, so a missing tag
    /// fails before mounting.
    pub fn new(source: Arc<dyn Source>, root: RootKind, cfg: TreeConfig) -> Result<Self, FsError> {
        let tree = Self {
            source,
            cfg,
            nodes: RwLock::new(Vec::new()),
            manifests: Mutex::new(HashMap::new()),
            tags: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            catalog: Mutex::new(HashMap::new()),
            hosts: match &root {
                RootKind::Hosts(m) => Some(m.clone()),
                _ => None,
            },
            warned: Mutex::new(HashSet::new()),
            referrers: Mutex::new(HashMap::new()),
        };
        let root_node = match root {
            RootKind::Registry => Node::Namespace {
                prefix: String::new(),
            },
            RootKind::Hosts(_) => Node::Hosts,
            RootKind::Repository(repo) => Node::Repo { repo },
            RootKind::Artifact(repo, reference) => {
                let fetched = tree.fetch_manifest(&repo, &reference)?;
                tree.manifest_node(&repo, reference, fetched)
            }
        };
        tree.write().push(Entry {
            node: root_node,
            parent: ROOT,
            children: BTreeMap::new(),
        });
        // The control directory is an orphan child of the root: it has the root as its
        // parent but is not in the root's listing.
        tree.write().push(Entry {
            node: Node::ControlDir,
            parent: ROOT,
            children: BTreeMap::new(),
        });
        tree.add(CONTROL_DIR, "stats.json", Node::StatsFile);
        let root = tree.node(ROOT)?;
        tree.fill_fixed(ROOT, &root);
        Ok(tree)
    }

    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Entry>> {
        self.nodes.write().unwrap_or_else(|e| e.into_inner())
    }
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The node behind an inode.
    pub fn node(&self, ino: Ino) -> Result<Node, FsError> {
        let idx = ino.checked_sub(1).ok_or(FsError::NotFound)? as usize;
        self.read()
            .get(idx)
            .map(|e| e.node.clone())
            .ok_or(FsError::NotFound)
    }

    pub fn parent(&self, ino: Ino) -> Ino {
        let idx = ino.saturating_sub(1) as usize;
        self.read().get(idx).map_or(ROOT, |e| e.parent)
    }

    fn warn_once(&self, key: String, msg: impl FnOnce() -> String) {
        if lock(&self.warned).insert(key) {
            log::warn!("{}", msg());
        }
    }

    fn add(&self, parent: Ino, name: &str, node: Node) -> Ino {
        let mut nodes = self.write();
        nodes.push(Entry {
            node,
            parent,
            children: BTreeMap::new(),
        });
        let ino = nodes.len() as Ino;
        if let Some(p) = nodes.get_mut(parent as usize - 1) {
            p.children.insert(name.to_string(), ino);
        }
        ino
    }

    fn child(&self, parent: Ino, name: &str) -> Option<Ino> {
        self.read()
            .get(parent as usize - 1)
            .and_then(|e| e.children.get(name).copied())
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
                    None => {
                        let m = self.source.manifest(repo, reference)?;
                        lock(&self.resolved).insert(key, (Instant::now(), m.digest.clone()));
                        lock(&self.manifests).insert(m.digest.clone(), m.clone());
                        return Ok(m);
                    }
                }
            }
        };
        if let Some(m) = lock(&self.manifests).get(&digest) {
            return Ok(m.clone());
        }
        let m = self.source.manifest(repo, &Reference::Digest(digest))?;
        lock(&self.manifests).insert(m.digest.clone(), m.clone());
        Ok(m)
    }

    fn manifest_node(&self, repo: &str, reference: Reference, fetched: FetchedManifest) -> Node {
        let mtime = fetched
            .manifest
            .annotations()
            .get(ANNOTATION_CREATED)
            .and_then(|s| parse_created(s))
            .unwrap_or_else(SystemTime::now);
        let m = Arc::new(ManifestNode {
            repo: repo.to_string(),
            digest: fetched.digest.clone(),
            reference,
            mtime,
            fetched,
        });
        match &m.fetched.manifest {
            Manifest::Image(_) => Node::Image(m),
            Manifest::Index(_) => Node::Index(m),
        }
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
        for (placement, layer) in names::place_layers(&image.layers)
            .into_iter()
            .zip(&image.layers)
        {
            // Block indexes serve the layers they index; they are not files of their own.
            if is_index_layer(layer) {
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
            let mut dir = ino;
            let (file, dirs) = match placement.path.split_last() {
                Some(x) => x,
                None => continue,
            };
            for d in dirs {
                dir = match self.child(dir, d) {
                    Some(c) => c,
                    None => self.add(
                        dir,
                        d,
                        Node::SubDir {
                            manifest: m.clone(),
                        },
                    ),
                };
            }
            let hint = IndexHint::for_layer(&m.repo, &m.digest, layer, &image.layers);
            self.add(dir, file, blob(layer, Some(hint)));
        }
    }

    /// Look up `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Ino, FsError> {
        let node = self.node(parent)?;
        if !node.is_dir() {
            return Err(FsError::NotDir);
        }
        if parent == ROOT && name == CONTROL_NAME {
            return Ok(CONTROL_DIR);
        }
        match &node {
            Node::Image(_) | Node::SubDir { .. } | Node::ControlDir => {
                self.child(parent, name).ok_or(FsError::NotFound)
            }
            Node::Index(m) => self.lookup_index(parent, m, name),
            Node::Repo { repo } => self.lookup_in_repo(parent, repo, name, false),
            Node::Namespace { prefix } => self.lookup_namespace(parent, prefix, name),
            Node::Hosts => self.lookup_host(parent, name),
            Node::Referrers(m) => self.lookup_referrer(parent, m, name),
            Node::Blob { .. } | Node::Inline { .. } | Node::StatsFile => Err(FsError::NotDir),
        }
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
        let node = self.manifest_node(&m.repo, reference, fetched);
        let ino = self.add(parent, name, node.clone());
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
        let node = self.manifest_node(&m.repo, reference, fetched);
        let ino = self.add(parent, name, node.clone());
        self.fill_fixed(ino, &node);
        Ok(ino)
    }

    /// Tags of a repository, from a listing no older than the TTL.
    pub fn tags(&self, repo: &str) -> Result<Arc<Vec<String>>, FsError> {
        if let Some((at, t)) = lock(&self.tags).get(repo) {
            if at.elapsed() < self.cfg.metadata_ttl {
                return Ok(t.clone());
            }
        }
        let mut t = self.source.tags(repo)?;
        t.retain(|t| valid_tag(t));
        t.sort();
        t.dedup();
        let t = Arc::new(t);
        lock(&self.tags).insert(repo.to_string(), (Instant::now(), t.clone()));
        Ok(t)
    }

    /// The catalog that covers `prefix`: the registry's, or in a multi-registry mount the
    /// catalog of the host `prefix` starts with (entries then read `host/repo`). A failure
    /// is remembered for the TTL like an answer.
    fn catalog(&self, prefix: &str) -> Result<Option<Arc<Vec<String>>>, FsError> {
        let scope = match &self.hosts {
            Some(_) => prefix.split('/').next().unwrap_or(""),
            None => "",
        };
        let cached = lock(&self.catalog)
            .get(scope)
            .filter(|(at, _)| at.elapsed() < self.cfg.metadata_ttl)
            .map(|(_, c)| c.clone());
        let result = match cached {
            Some(c) => c,
            None => {
                let fetched = match &self.hosts {
                    Some(m) => m.host_catalog(scope),
                    None => self.source.catalog(),
                };
                let c = fetched
                    .map(|c| {
                        c.map(|mut c| {
                            c.retain(|r| r.is_empty() || self.valid_path(r));
                            c.sort();
                            Arc::new(c)
                        })
                    })
                    .map_err(|e| e.to_string());
                lock(&self.catalog).insert(scope.to_string(), (Instant::now(), c.clone()));
                c
            }
        };
        result.map_err(|detail| {
            FsError::Source(SourceError::Protocol {
                what: "catalog".into(),
                detail,
            })
        })
    }

    /// The catalog for a lookup by name: one that fails counts as none, so repositories
    /// are still found by name.
    fn catalog_for_lookup(&self, prefix: &str) -> Option<Arc<Vec<String>>> {
        self.catalog(prefix).unwrap_or_else(|e| {
            self.warn_once(format!("catalog:{prefix}"), || {
                format!("{e}; repositories are found by name only")
            });
            None
        })
    }

    /// Whether `path` may name a repository or namespace (in a multi-registry mount, after
    /// its leading host component).
    fn valid_path(&self, path: &str) -> bool {
        match &self.hosts {
            Some(_) => match path.split_once('/') {
                Some((host, rest)) => crate::target::valid_host(host) && valid_repo_name(rest),
                None => crate::target::valid_host(path),
            },
            None => valid_repo_name(path),
        }
    }

    /// A registry host in the multi-registry root; an unreachable one is "not found".
    fn lookup_host(&self, parent: Ino, name: &str) -> Result<Ino, FsError> {
        let Some(m) = &self.hosts else {
            return Err(FsError::NotFound);
        };
        if !crate::target::valid_host(name) {
            return Err(FsError::NotFound);
        }
        if let Some(c) = self.child(parent, name) {
            return Ok(c);
        }
        if let Err(e) = m.host(name) {
            log::warn!("registry {name}: {e}");
            return Err(FsError::NotFound);
        }
        Ok(self.add(
            parent,
            name,
            Node::Namespace {
                prefix: name.to_string(),
            },
        ))
    }

    /// A tag or `sha256:` digest inside a repository directory.
    fn lookup_in_repo(
        &self,
        parent: Ino,
        repo: &str,
        name: &str,
        may_be_namespace: bool,
    ) -> Result<Ino, FsError> {
        let reference = if name.starts_with("sha256:") {
            Reference::Digest(Digest::parse(name).map_err(|_| FsError::NotFound)?)
        } else if valid_tag(name)
            && self
                .tags(repo)
                .map(|t| t.binary_search(&name.to_string()).is_ok())
                .unwrap_or(false)
        {
            if may_be_namespace {
                self.warn_once(format!("ns:{repo}/{name}"), || {
                    format!("{repo}: tag {name:?} hides the namespace {repo}/{name}; the tag wins")
                });
            }
            Reference::Tag(name.to_string())
        } else {
            return Err(FsError::NotFound);
        };
        let fetched = self.fetch_manifest(repo, &reference)?;
        // Reuse the inode while the name still resolves to the same manifest, so open files
        // and the kernel's caches stay coherent; a moved tag gets a fresh inode.
        if let Some(c) = self.child(parent, name) {
            if let Ok(Node::Image(m) | Node::Index(m)) = self.node(c) {
                if m.digest == fetched.digest {
                    return Ok(c);
                }
            }
        }
        let node = self.manifest_node(repo, reference, fetched);
        let ino = self.add(parent, name, node.clone());
        self.fill_fixed(ino, &node);
        Ok(ino)
    }

    fn lookup_namespace(&self, parent: Ino, prefix: &str, name: &str) -> Result<Ino, FsError> {
        let catalog = self.catalog_for_lookup(prefix);
        let is_repo = |r: &str| {
            catalog
                .as_ref()
                .is_some_and(|c| c.binary_search(&r.to_string()).is_ok())
        };
        if !prefix.is_empty() && (is_repo(prefix) || catalog.is_none()) {
            let path = format!("{prefix}/{name}");
            let shadows = catalog.as_ref().is_some_and(|c| {
                c.iter()
                    .any(|r| r == &path || r.starts_with(&format!("{path}/")))
            });
            match self.lookup_in_repo(parent, prefix, name, shadows) {
                Ok(ino) => return Ok(ino),
                Err(FsError::NotFound) | Err(FsError::Source(SourceError::NotFound(_))) => {}
                Err(e) => return Err(e),
            }
        }
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        if !self.valid_path(&path) {
            return Err(FsError::NotFound);
        }
        let exists = match &catalog {
            Some(c) => c
                .iter()
                .any(|r| r == &path || r.starts_with(&format!("{path}/"))),
            // Without a catalog any well-formed name may be a repository or namespace.
            None => true,
        };
        if !exists {
            return Err(FsError::NotFound);
        }
        if let Some(c) = self.child(parent, name) {
            if matches!(self.node(c), Ok(Node::Namespace { .. })) {
                return Ok(c);
            }
        }
        Ok(self.add(parent, name, Node::Namespace { prefix: path }))
    }

    /// The entries of a directory: `(name, ino, is_dir)`.
    pub fn list(&self, ino: Ino) -> Result<Vec<(String, Ino, bool)>, FsError> {
        let node = self.node(ino)?;
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
            Node::Repo { repo } => return Ok(self.unresolved(ino, listed_tags(&self.tags(repo)?))),
            Node::Namespace { prefix } => {
                return Ok(self.unresolved(ino, self.namespace_names(prefix)?))
            }
            Node::Hosts => {
                let hosts = self.hosts.as_ref().map(|m| m.visited()).unwrap_or_default();
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
            Node::Blob { .. } | Node::Inline { .. } | Node::StatsFile => {
                return Err(FsError::NotDir)
            }
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.lookup(ino, &name) {
                Ok(c) => out.push((name, c, self.node(c).map(|n| n.is_dir()).unwrap_or(true))),
                Err(e) => log::warn!("skipping {name:?} in listing: {e}"),
            }
        }
        Ok(out)
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
        let nodes = self.read();
        let Some(e) = nodes.get(ino as usize - 1) else {
            return Vec::new();
        };
        e.children
            .iter()
            .filter_map(|(n, c)| {
                let child = nodes.get(*c as usize - 1);
                // `.referrers/` is looked up by name only.
                if let Some(Entry {
                    node: Node::Referrers(_),
                    ..
                }) = child
                {
                    return None;
                }
                let is_dir = child.map(|e| e.node.is_dir()).unwrap_or(false);
                Some((n.clone(), *c, is_dir))
            })
            .collect()
    }

    /// Child names of a namespace: next path components of repositories under it, plus the
    /// tags when the prefix is itself a repository (tags win over namespaces).
    fn namespace_names(&self, prefix: &str) -> Result<Vec<String>, FsError> {
        let Some(catalog) = self.catalog(prefix)? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        let lead = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        for r in catalog.iter() {
            if let Some(rest) = r.strip_prefix(&lead) {
                if let Some(first) = rest.split('/').next().filter(|f| !f.is_empty()) {
                    names.push(first.to_string());
                }
            }
        }
        if !prefix.is_empty() && catalog.binary_search(&prefix.to_string()).is_ok() {
            names.extend(listed_tags(&self.tags(prefix)?));
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Forget cached tags, listings and tag resolutions (not digest-addressed data).
    pub fn drop_metadata(&self) {
        lock(&self.tags).clear();
        lock(&self.resolved).clear();
        lock(&self.catalog).clear();
        lock(&self.referrers).clear();
    }
}

/// Tags as listed: those of the referrers tag schema (`sha256-<hex>`) are hidden, since
/// they index other artifacts' referrers; they still resolve by name.
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
