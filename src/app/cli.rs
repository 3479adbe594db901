//! The command line: clap types, turned into plain config structs. No clap type passes
//! this module.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::config::{Access, IndexConfig, MountConfig, RegistryConfig};
use crate::cache::CacheConfig;
use crate::fs::tree::TreeConfig;
use crate::fs::FsConfig;
use crate::read::{ReadConfig, VerifyMode};

const SOURCE_HELP: &str = "\
SOURCE forms:
  (none)                         any registry, by host name      orasfs mount /mnt/oci; ls /mnt/oci/ghcr.io/org/repo/v1
  HOST[:PORT]                    the registry's repositories     127.0.0.1:5000, ghcr.io
  HOST[:PORT]/REPO               one repository's tags           127.0.0.1:5000/eo/products
  HOST[:PORT]/REPO:TAG           one artifact's files            ghcr.io/org/model:v2
  HOST[:PORT]/REPO@sha256:HEX    one artifact, by digest         127.0.0.1:5000/eo/products@sha256:5f2a...
  DIR[:TAG]                      an OCI image layout (tags, or one tag's files)   ./eo-layout:v1

Loopback registries (localhost, 127.0.0.0/8, ::1) use plain HTTP; others HTTPS.
An https:// before a registry SOURCE forces HTTPS (https://127.0.0.1:5000/repo:tag),
http:// forces plain HTTP.

Examples:
  orasfs mount 127.0.0.1:5000 /mnt/oci
  ls /mnt/oci/eo/products/v1/
  gdalinfo /mnt/oci/eo/products/v1/imagery.tif
  orasfs mount ./examples/eo-layout:v1 /mnt/eo";

/// Mount OCI registries and OCI image layouts as a read-only filesystem.
#[derive(Debug, Parser)]
#[command(name = "orasfs", version, about, after_help = SOURCE_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount SOURCE at MOUNTPOINT (read-only); without SOURCE, every registry by host name.
    #[command(
        after_help = SOURCE_HELP,
        override_usage = "orasfs mount [OPTIONS] [SOURCE] MOUNTPOINT"
    )]
    Mount(Box<MountArgs>),
    /// Inspect or trim the blob cache.
    Cache(CacheArgs),
    /// Unmount an orasfs mount.
    Umount {
        mountpoint: PathBuf,
        /// Detach now, clean up when no longer busy.
        #[arg(long)]
        lazy: bool,
    },
    /// Print the counters of a running mount (from MOUNTPOINT/.orasfs/stats.json).
    Stats { mountpoint: PathBuf },
    /// Compute a block-digest index of each layer of REF and attach it, so that mounts
    /// verify every lazily read block.
    #[command(after_help = INDEX_HELP)]
    Index(Box<IndexArgs>),
}

const INDEX_HELP: &str = "\
REF forms:
  HOST[:PORT]/REPO:TAG | HOST[:PORT]/REPO@sha256:HEX | DIR:TAG (an OCI image layout)

By default the index is pushed as a referrer of the manifest (found through the
referrers API, or the sha256-<hex> referrers tag); the artifact is unchanged, and the
index is trusted as far as the registry is. With --embed the manifest is rewritten to
carry the index as extra layers, bound by the new manifest digest. Prints the digest of
the manifest it pushed.

Examples:
  orasfs index 127.0.0.1:5000/eo/products:v1
  orasfs index --embed ghcr.io/org/cog:v2
  orasfs index ./eo-layout:v1";

/// `orasfs index`.
#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    /// The artifact to index (see REF forms below).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Rewrite the manifest to carry the index (bound by its digest) instead of pushing a
    /// referrer.
    #[arg(long)]
    pub embed: bool,
    /// With --embed: push the new manifest to this tag instead of REF's.
    #[arg(long, value_name = "TAG", requires = "embed")]
    pub tag: Option<String>,
    /// Bytes per hashed block: a power of two from 4KiB to 16MiB. Mounts use an index only
    /// when its blocks are the read path's (16KiB).
    #[arg(long, value_name = "SIZE", default_value = "16KiB", value_parser = parse_block_size)]
    pub block_size: u64,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl IndexArgs {
    /// The plain configuration of the command.
    pub fn config(&self) -> IndexConfig {
        IndexConfig {
            reference: self.reference.clone(),
            embed: self.embed,
            tag: self.tag.clone(),
            block_size: self.block_size,
            registry: self.registry.config(),
        }
    }
}

/// How to reach and log in to a registry.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry (loopback registries do unless SOURCE starts with
    /// https://).
    #[arg(long)]
    pub plain_http: bool,
    /// Skip TLS certificate verification (unsafe).
    #[arg(long)]
    pub insecure: bool,
    /// Trust this PEM CA bundle in addition to the system roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Registry credentials file (Docker config.json or containers auth.json format); when
    /// given, the only file read. Without it: $REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, then $DOCKER_CONFIG/config.json (or
    /// ~/.docker/config.json); the first with credentials for the registry wins.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Registry user name, with the password read from standard input (--password-stdin).
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password (or token) from standard input.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Connect timeout for registry requests.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Fail a registry response whose body stalls this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// Times one registry request is tried again after transient failures (connection
    /// errors, 5xx/429/408, a body cut short), all of them together; then the read fails
    /// with EIO.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
}

impl RegistryArgs {
    /// The plain configuration (no mirrors: those are mount flags).
    pub fn config(&self) -> RegistryConfig {
        RegistryConfig {
            plain_http: self.plain_http,
            insecure: self.insecure,
            ca_file: self.ca_file.clone(),
            auth_file: self.auth_file.clone(),
            username: self.username.clone().filter(|_| self.password_stdin),
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            retries: self.retries,
            mirrors: Default::default(),
            mirror_cooldown: Duration::from_secs(30),
            mirror_fill_wait: Duration::from_secs(120),
        }
    }
}

/// Parse a block size: a size that is a power of two from 4 KiB to 16 MiB.
pub fn parse_block_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !n.is_power_of_two() || !(4096..=16 << 20).contains(&n) {
        return Err(format!(
            "{s:?}: a block size must be a power of two from 4KiB to 16MiB"
        ));
    }
    Ok(n)
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
    /// Cache directory [default: $XDG_CACHE_HOME/orasfs, or /var/cache/orasfs for root].
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Print size, blob count, verified and partial blobs.
    Stats,
    /// Evict least recently used blobs until the cache is at most SIZE.
    Prune {
        /// Target size, e.g. 512MiB or 20GiB.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: u64,
    },
    /// Remove everything from the cache.
    Clear,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum VerifyArg {
    /// Serve ranges as they arrive (each block checked against the layer's block index
    /// when it has one); verify the whole blob when its last byte arrives.
    Lazy,
    /// Serve only checked bytes: lazily when a block index bound by the manifest exists,
    /// otherwise fetch and verify a whole blob before serving its first byte.
    Strict,
    /// Like strict, but refuse (EACCES) large layers that have no block index.
    RequireIndex,
}

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// `[SOURCE] MOUNTPOINT`: what to mount (see SOURCE forms below) and an existing
    /// directory. Without SOURCE, any registry is reachable as MOUNTPOINT/HOST/REPO/TAG.
    #[arg(required = true, num_args = 1..=2, value_names = ["SOURCE", "MOUNTPOINT"])]
    pub operands: Vec<String>,
    /// Mount even if MOUNTPOINT is not empty (its files stay hidden until unmounted).
    #[arg(long)]
    pub nonempty: bool,
    /// Stay attached to the terminal instead of running as a daemon.
    #[arg(short, long)]
    pub foreground: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::app::logging::LogFormat,
    /// Append logs to FILE (a daemon otherwise discards them once the mount is ready).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Cache directory [default: $XDG_CACHE_HOME/orasfs, or /var/cache/orasfs for root].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Cap the cache at SIZE (binary units: 512MiB, 20GiB); least recently used blobs are
    /// evicted first, never one an open file is reading.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Keep at least this share of the cache's filesystem free, in percent (0 to 99).
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0, value_parser = parse_percent)]
    pub cache_min_free: f64,
    /// Largest small blob verified and held in memory when the cache cannot store it
    /// (disk full, read-only) (e.g. 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_memory: u64,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Let root access the mount as well as the owner.
    #[arg(long, conflicts_with = "allow_other")]
    pub allow_root: bool,
    /// When bytes are checked against the blob digest.
    #[arg(long, value_enum, default_value = "lazy")]
    pub verify: VerifyArg,
    /// How long tags and listings are trusted before asking the registry again
    /// (e.g. 30s, 5m; 0 asks every time).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub metadata_ttl: Duration,

    /// Which archive layers also appear unpacked, as a directory beside their file:
    /// `oras` (those annotated io.deis.oras.content.unpack, as `oras pull` unpacks them),
    /// `all` (every tar/tar+gzip layer: Helm charts, image layers), `none`
    #[arg(long, value_enum, value_name = "MODE", default_value = "oras")]
    pub unpack: crate::archive::UnpackMode,
    /// Serve verified blobs through orasfs even where the kernel could read them directly
    /// (FUSE passthrough, Linux 6.9+).
    #[arg(long)]
    pub no_passthrough: bool,
    /// FUSE worker threads (1 to 64).
    #[arg(long, default_value_t = 8, value_parser = parse_threads)]
    pub threads: usize,
    /// Owner of every file [default: the mounting user].
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of every file [default: the mounting user's group].
    #[arg(long)]
    pub gid: Option<u32>,
    /// Permission bits of files.
    #[arg(long, value_name = "OCTAL", default_value = "0444", value_parser = parse_mode)]
    pub file_mode: u16,
    /// Permission bits of directories.
    #[arg(long, value_name = "OCTAL", default_value = "0555", value_parser = parse_mode)]
    pub dir_mode: u16,
    /// Mirrors from this containers-registries.conf(5) file only [default:
    /// ~/.config/containers/registries.conf or /etc/containers/registries.conf, plus the
    /// registries.conf.d/ drop-ins].
    #[arg(long, value_name = "FILE")]
    pub registries_conf: Option<PathBuf>,
    /// containerd hosts directory holding HOST/hosts.toml [default: /etc/containerd/certs.d].
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// Ask this mirror (a pull-through cache) for blobs and manifests by digest before the
    /// registry; repeatable, tried in order. PREFIX is put before the repository name.
    #[arg(long, value_name = "HOST[/PREFIX]")]
    pub mirror: Vec<String>,
    /// How long a mirror that failed is skipped before it is asked again.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub mirror_cooldown: Duration,
    /// How long to wait for a pull-through cache that is still fetching a blob (it answers
    /// ranges with the whole blob) before reading the blob from the next source.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub mirror_fill_wait: Duration,
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl MountArgs {
    /// SOURCE, or `None` for the multi-registry root.
    pub fn source(&self) -> Option<&str> {
        match self.operands.as_slice() {
            [source, _] => Some(source),
            _ => None,
        }
    }

    /// MOUNTPOINT.
    pub fn mountpoint(&self) -> PathBuf {
        PathBuf::from(self.operands.last().map(String::as_str).unwrap_or(""))
    }

    /// The plain configuration of the mount.
    pub fn config(&self) -> MountConfig {
        let mut registry = self.registry.config();
        registry.mirrors = crate::fleet::Settings {
            registries_conf: self.registries_conf.clone(),
            hosts_dir: self.hosts_dir.clone(),
            mirrors: self.mirror.clone(),
            home: None,
        };
        registry.mirror_cooldown = self.mirror_cooldown;
        registry.mirror_fill_wait = self.mirror_fill_wait;
        let mut cache = CacheConfig::new(self.cache_dir.clone().unwrap_or_else(default_cache_dir));
        cache.max_size = self.cache_size;
        cache.min_free_percent = self.cache_min_free;
        let mut fs = FsConfig {
            mutable_ttl: self.metadata_ttl,
            file_mode: self.file_mode,
            dir_mode: self.dir_mode,
            ..FsConfig::default()
        };
        fs.uid = self.uid.unwrap_or(fs.uid);
        fs.gid = self.gid.unwrap_or(fs.gid);
        MountConfig {
            source: self.source().map(str::to_string),
            mountpoint: self.mountpoint(),
            nonempty: self.nonempty,
            registry,
            cache,
            tree: TreeConfig {
                metadata_ttl: self.metadata_ttl,
                unpack: self.unpack,
                ..TreeConfig::default()
            },
            read: ReadConfig {
                verify: self.verify.into(),
                max_memory: self.max_memory,
                ..ReadConfig::default()
            },
            fs,
            access: if self.allow_other {
                Access::All
            } else if self.allow_root {
                Access::OwnerAndRoot
            } else {
                Access::Owner
            },
            threads: self.threads,
            passthrough: !self.no_passthrough,
        }
    }
}

/// Parse permission bits in octal; write bits are refused, the mount is read-only.
pub fn parse_mode(s: &str) -> Result<u16, String> {
    let m = u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?}: expected octal permission bits like 0444"))?;
    if m > 0o7777 {
        return Err(format!("{s:?}: not a permission mode"));
    }
    if m & 0o222 != 0 {
        return Err(format!(
            "{s:?}: write bits make no sense on a read-only mount"
        ));
    }
    Ok(m)
}

/// Parse a share of free space to keep: 100 would leave no room to store anything.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..100.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{s:?}: expected a percentage from 0 to 99 (100 would leave the cache no room)"
        )),
    }
}

/// Parse a count of FUSE worker threads.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: expected from 1 to 64 threads")),
    }
}

/// Parse a size with binary units: `4096`, `512KiB`, `512MiB`, `20GiB`, `1TiB` (also
/// `K`/`M`/`G`/`T`, meaning the same).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 512MiB or 20GiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use KiB, MiB, GiB, TiB)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Parse `30s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 30s, 5m, 0)"))
}

impl From<VerifyArg> for VerifyMode {
    fn from(v: VerifyArg) -> Self {
        match v {
            VerifyArg::Lazy => VerifyMode::Lazy,
            VerifyArg::Strict => VerifyMode::Strict,
            VerifyArg::RequireIndex => VerifyMode::RequireIndex,
        }
    }
}

/// The default cache directory for this user.
pub fn default_cache_dir() -> PathBuf {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return PathBuf::from("/var/cache/orasfs");
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("orasfs");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/orasfs"),
        None => std::env::temp_dir().join("orasfs-cache"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn values_out_of_range_are_refused_not_clamped() {
        assert_eq!(parse_percent("5").unwrap(), 5.0);
        assert_eq!(parse_percent("0").unwrap(), 0.0);
        for bad in ["100", "150", "-1", "NaN", "five"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_threads("1").unwrap(), 1);
        assert_eq!(parse_threads("64").unwrap(), 64);
        for bad in ["0", "65", "-2"] {
            assert!(parse_threads(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
