//! Block-digest indexes: a sha256 per block of a blob, so that lazily read blocks are
//! checked before they are served. [`format`] is the on-wire format; [`build`] makes an
//! index by streaming a blob once, [`attach`] and [`publish`] attach it to an artifact
//! (as a referrer, or embedded in its manifest) (the `orasfs index` command is `app::index`).

pub mod attach;
pub mod build;
pub mod format;
pub mod publish;
