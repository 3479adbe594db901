//! The error types of the layers below the filesystem: sources (registries, layouts) and
//! the cache and read path. The filesystem wraps them in `fs::error::FsError`, which is
//! where every error becomes an errno.

use std::io;
use std::sync::Arc;

use thiserror::Error;

use crate::oci::{Digest, OciError};

/// Errors from a [`crate::source::Source`]: a registry or an OCI layout. `Clone`, so that
/// one failed fetch can answer every reader that waited for it (I/O errors are shared).
#[derive(Debug, Clone, Error)]
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
    /// Reading the source failed (a layout's file, a CA bundle).
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// The receiver of a blob's bytes (the cache, an index builder) refused them: the
    /// source answered, the fault is on this side. See [`SourceError::sink`].
    #[error("{what}: the bytes could not be taken in: {source}")]
    Sink {
        what: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("invalid OCI layout {path}: {detail}")]
    Layout { path: String, detail: String },
    #[error("{0}")]
    Unsupported(String),
}

impl SourceError {
    /// Whether trying the same request again may succeed: the source could not be reached
    /// or answered with a transient status. The one test of transience: the registry
    /// client's retries ask it too.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Unreachable { .. } | SourceError::Down { .. } => true,
            SourceError::Status { status, .. } => is_transient_status(*status),
            _ => false,
        }
    }

    /// A [`crate::source::BlobSink`] failed while receiving the bytes of `what`.
    pub fn sink(what: impl Into<String>, source: io::Error) -> Self {
        SourceError::Sink {
            what: what.into(),
            source: Arc::new(source),
        }
    }

    /// Reading `path` failed.
    pub fn io(path: impl Into<String>, source: io::Error) -> Self {
        SourceError::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

/// Whether an HTTP status says "try again": 5xx, 429 Too Many Requests, 408 Request
/// Timeout.
fn is_transient_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// Errors of the blob cache and read path. `Clone`, so that a failed fetch can answer
/// every reader that waited for it.
#[derive(Debug, Clone, Error)]
pub enum CacheError {
    #[error("{digest}: content does not match its digest ({detail})")]
    Integrity { digest: Digest, detail: String },
    #[error("cache {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A fetch this read waited for failed in the reader that made it. It carries that
    /// reader's error, so every reader of a shared fetch gets the same errno.
    #[error("{digest}: the fetch this read waited for failed: {cause}")]
    Shared {
        digest: Digest,
        cause: Box<CacheError>,
    },
    #[error("{0}")]
    Refused(String),
}

impl CacheError {
    /// An I/O error of the cache at `path`.
    pub fn io(path: impl Into<String>, source: io::Error) -> Self {
        CacheError::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// The error where it arose: through shared fetches to the reader that made the fetch.
    pub fn origin(&self) -> &CacheError {
        match self {
            CacheError::Shared { cause, .. } => cause.origin(),
            other => other,
        }
    }
}
