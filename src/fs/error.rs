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
            FsError::Source(SourceError::Unauthorized { .. }) => "unauthorized",
            FsError::Source(_) | FsError::Cache(CacheError::Source(_)) => "registry",
            FsError::Cache(CacheError::Integrity { .. }) => "integrity",
            FsError::Cache(CacheError::Refused(_)) => "refused",
            FsError::Cache(_) => "cache",
            FsError::Archive(_) => "archive",
        }
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
        FsError::Source(s) | FsError::Cache(CacheError::Source(s)) => source_errno(s),
        FsError::Cache(CacheError::Refused(_)) => libc::EACCES,
        FsError::Cache(_) | FsError::Archive(_) => libc::EIO,
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
        match self {
            FsError::Source(s) | FsError::Cache(CacheError::Source(s)) => s.is_transient(),
            _ => false,
        }
    }

    /// Whether the error was already logged where it arose (an outage is logged once).
    pub fn logged(&self) -> bool {
        matches!(
            self,
            FsError::Source(SourceError::Down { .. })
                | FsError::Cache(CacheError::Source(SourceError::Down { .. }))
        )
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
}
