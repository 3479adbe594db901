//! Block-digest indexes: a sha256 per block of a blob, so that lazily read blocks are
//! checked before they are served. [`format`] is the on-wire format.

pub mod format;
