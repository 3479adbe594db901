//! Block-digest indexes: a sha256 per block of a blob, so that lazily read blocks are
//! checked before they are served. [`format`] is the on-wire format; [`build`] makes an
//! index by streaming a blob once, [`attach`] and [`publish`] attach it to an artifact
//! (as a referrer, or embedded in its manifest) and [`command`] is `orasfs index`.

pub mod attach;
pub mod build;
pub mod command;
pub mod format;
pub mod publish;
