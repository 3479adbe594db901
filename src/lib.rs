//! orasfs: a read-only FUSE filesystem over OCI registries and OCI image layouts.
//!
//! Data flows one way: FUSE request → [`fuse`] → [`fs`] → [`tree`] (which file is this?)
//! → [`cache`] (do we have these bytes?) → [`source`] (fetch the missing range).

pub mod cache;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod helper;
pub mod logging;
pub mod mount;
pub mod mountpoint;
pub mod names;
pub mod oci;
pub mod registry;
pub mod source;
pub mod stats;
pub mod target;
pub mod tree;

#[cfg(test)]
mod core_tests;
