//! orasfs: a read-only FUSE filesystem over OCI registries and OCI image layouts.
//!
//! The layers, in the order data flows; each imports only the layers after it (checked by
//! `tests/layers.rs`):
//! 1. [`app`]: the command line, the mount and its daemon.
//! 2. [`fs`]: what the kernel talks to: FUSE adapter → core → tree of names → errno.
//! 3. [`archive`]: tar, tar.gz and tar.zst layers browsed as directories.
//! 4. [`read`]: which bytes of a blob, from where, verified how.
//! 5. [`cache`] (do we have them?) and [`index`] (block digests to check them).
//! 6. [`fleet`] (mirrors) over [`source`] (registries and layouts): fetch what is missing.
//! 7. [`oci`], [`names`] and [`error`]: the shared model.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod app;
pub mod archive;
pub mod cache;
pub mod error;
pub mod fleet;
pub mod fs;
pub mod index;
pub mod names;
pub mod oci;
pub mod read;
pub mod source;
