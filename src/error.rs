//! The error types of the layers below the filesystem: sources (registries, layouts) and
//! the cache and read path. The filesystem wraps them in `fs::error::FsError`, which is
//! where every error becomes an errno.

use std::io;

use thiserror::Error;

use crate::oci::{Digest, OciError};

/// Errors from a [`crate::source::Source`]: a registry or an OCI layout.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("authentication required for {registry}: {hint}")]
    Unauthorized { registry: String, hint: String },
    #[error("cannot reach {target}: {detail}")]
    Unreachable { target: String, detail: String },
    /// The registry is known to be down: the request was not sent (see
    /// `registry::outage`). Logged once when the outage starts, not per request.
    #[error("registry {target} is down {detail}")]
    Down { target: String, detail: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{what}: {detail}")]
    Protocol { what: String, detail: String },
    #[error("{what}: {source}")]
    Oci {
        what: String,
        #[source]
        source: OciError,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid OCI layout {path}: {detail}")]
    Layout { path: String, detail: String },
    #[error("{0}")]
    Unsupported(String),
}

impl SourceError {
    /// Whether trying the same request again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Unreachable { .. } | SourceError::Down { .. } => true,
            SourceError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }
}

/// Errors of the blob cache and read path.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("{digest}: content does not match its digest ({detail})")]
    Integrity { digest: Digest, detail: String },
    #[error("cache {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("fetch of {0} failed in another reader")]
    SharedFetch(String),
    #[error("{0}")]
    Refused(String),
}
