//! The filesystem's error type, and the single place where errors become errno values.

use thiserror::Error;

use crate::error::{CacheError, SourceError};

/// Errors of the filesystem core, as `fs.rs` reports them.
#[derive(Debug, Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("bad file handle")]
    BadHandle,
    #[error("no such attribute")]
    NoAttr,
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
}

impl FsError {
    /// A short name of the error's kind, for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            FsError::NotFound => "not_found",
            FsError::NotDir | FsError::IsDir | FsError::BadHandle | FsError::NoAttr => "usage",
            FsError::ReadOnly => "read_only",
            FsError::Source(s) => source_kind(s),
            // A shared fetch counts as what failed in the reader that made it.
            FsError::Cache(c) => match c.origin() {
                CacheError::Source(s) => source_kind(s),
                CacheError::Integrity { .. } => "integrity",
                CacheError::Refused(_) => "refused",
                CacheError::Io { .. } | CacheError::Shared { .. } => "cache",
            },
            FsError::Archive(_) => "archive",
        }
    }
}

fn source_kind(s: &SourceError) -> &'static str {
    match s {
        SourceError::Unauthorized { .. } => "unauthorized",
        // The bytes arrived; taking them in failed.
        SourceError::Sink { .. } => "cache",
        _ => "registry",
    }
}

/// The errno a FUSE reply carries for an error. This is the only mapping.
pub fn to_errno(e: &FsError) -> i32 {
    match e {
        FsError::NotFound => libc::ENOENT,
        FsError::NotDir => libc::ENOTDIR,
        FsError::IsDir => libc::EISDIR,
        FsError::ReadOnly => libc::EROFS,
        FsError::BadHandle => libc::EBADF,
        FsError::NoAttr => libc::ENODATA,
        FsError::Source(s) => source_errno(s),
        // Every reader of a shared fetch gets the errno of the reader that made it.
        FsError::Cache(c) => match c.origin() {
            CacheError::Source(s) => source_errno(s),
            CacheError::Refused(_) => libc::EACCES,
            CacheError::Integrity { .. } | CacheError::Io { .. } | CacheError::Shared { .. } => {
                libc::EIO
            }
        },
        FsError::Archive(_) => libc::EIO,
    }
}

fn source_errno(s: &SourceError) -> i32 {
    match s {
        SourceError::NotFound(_) => libc::ENOENT,
        SourceError::Unauthorized { .. } => libc::EACCES,
        SourceError::Oci { .. } | SourceError::Layout { .. } => libc::EIO,
        SourceError::Unsupported(_) => libc::ENOTSUP,
        _ => libc::EIO,
    }
}

impl FsError {
    /// Whether this error says the source could not answer (an outage: unreachable, 5xx,
    /// 429), as opposed to a definite answer such as "not found" or "refused". Only an
    /// outage lets the tree fall back on what it saw before.
    pub fn is_outage(&self) -> bool {
        self.source_error().is_some_and(SourceError::is_transient)
    }

    /// Whether the error was already logged where it arose (an outage is logged once).
    pub fn logged(&self) -> bool {
        // A refusal (--verify require-index) is logged once per blob where it is decided.
        let refused =
            matches!(self, FsError::Cache(c) if matches!(c.origin(), CacheError::Refused(_)));
        refused || matches!(self.source_error(), Some(SourceError::Down { .. }))
    }

    /// The source's error this one carries, if any (through a shared fetch too).
    fn source_error(&self) -> Option<&SourceError> {
        match self {
            FsError::Source(s) => Some(s),
            FsError::Cache(c) => match c.origin() {
                CacheError::Source(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    #[test]
    fn errno_mapping() {
        assert_eq!(to_errno(&FsError::ReadOnly), libc::EROFS);
        assert_eq!(
            to_errno(&FsError::Source(SourceError::NotFound("x".into()))),
            libc::ENOENT
        );
        let integrity = CacheError::Integrity {
            digest: Digest::of(b""),
            detail: "x".into(),
        };
        assert_eq!(to_errno(&FsError::Cache(integrity)), libc::EIO);
    }

    /// A fetch shared by several readers answers each with the errno and kind of what
    /// failed in the reader that made it.
    #[test]
    fn a_shared_fetch_keeps_the_errno_and_kind_of_its_cause() {
        let shared = |cause: SourceError| {
            FsError::Cache(CacheError::Shared {
                digest: Digest::of(b""),
                cause: Box::new(CacheError::Source(cause)),
            })
        };
        let refused = shared(SourceError::Unauthorized {
            registry: "r".into(),
            hint: "h".into(),
        });
        assert_eq!(to_errno(&refused), libc::EACCES);
        assert_eq!(refused.kind(), "unauthorized");
        let missing = shared(SourceError::NotFound("x".into()));
        assert_eq!(to_errno(&missing), libc::ENOENT);
        let down = shared(SourceError::Status {
            url: "u".into(),
            status: 503,
        });
        assert_eq!(to_errno(&down), libc::EIO);
        assert!(down.is_outage());
    }

    /// A cache that could not take the bytes is the cache's failure, not the source's.
    #[test]
    fn a_sink_failure_counts_as_the_cache_and_a_read_failure_as_the_source() {
        let sink = SourceError::sink("blob", std::io::Error::other("disk full"));
        let io = SourceError::io("layout file", std::io::Error::other("bad sector"));
        assert_eq!(FsError::Source(sink.clone()).kind(), "cache");
        assert_eq!(FsError::Cache(CacheError::Source(sink)).kind(), "cache");
        assert_eq!(FsError::Source(io).kind(), "registry");
    }
}
