//! What the command line asked for, as plain structs: [`crate::app::cli`] builds them
//! once from its clap types, and everything after it reads only these.

use std::path::PathBuf;
use std::time::Duration;

use crate::cache::CacheConfig;
use crate::fs::tree::TreeConfig;
use crate::fs::FsConfig;
use crate::read::ReadConfig;

/// How to reach registries: transport, credentials, retries, and mirrors.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Plain HTTP unless a SOURCE says `https://` (loopback hosts use it anyway).
    pub plain_http: bool,
    /// Skip TLS certificate verification.
    pub insecure: bool,
    /// A PEM CA bundle trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// The only credentials file read, instead of the usual search.
    pub auth_file: Option<PathBuf>,
    /// A user name whose password is read from standard input.
    pub username: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Retries of a failed request.
    pub retries: u32,
    /// Where mirror configuration comes from.
    pub mirrors: crate::fleet::Settings,
    /// How long a failed mirror is skipped.
    pub mirror_cooldown: Duration,
    /// How long to wait for a mirror still fetching a blob.
    pub mirror_fill_wait: Duration,
}

/// Who may use the mount besides its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    OwnerAndRoot,
    All,
}

/// One mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// SOURCE as given; `None` mounts every registry by host name.
    pub source: Option<String>,
    pub mountpoint: PathBuf,
    /// Mount over a directory that is not empty.
    pub nonempty: bool,
    pub registry: RegistryConfig,
    pub cache: CacheConfig,
    pub tree: TreeConfig,
    pub read: ReadConfig,
    pub fs: FsConfig,
    pub access: Access,
    /// FUSE worker threads.
    pub threads: usize,
    /// Ask the kernel for FUSE passthrough.
    pub passthrough: bool,
}

/// `orasfs index`: what to index and where the index goes.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// REF as given.
    pub reference: String,
    /// Rewrite the manifest to carry the index instead of pushing a referrer.
    pub embed: bool,
    /// With `embed`: the tag the new manifest is pushed to, instead of REF's.
    pub tag: Option<String>,
    /// Bytes per hashed block.
    pub block_size: u64,
    pub registry: RegistryConfig,
}
