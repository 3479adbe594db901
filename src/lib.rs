//! orasfs: a read-only FUSE filesystem over OCI registries and OCI image layouts.
//!
//! Data flows one way: FUSE request → [`fuse`] → [`fs`] → [`tree`] (which file is this?)
//! → [`read`] (which bytes, from where, verified how?) → [`cache`] (do we have them?) and
//! [`source`] (fetch what is missing).

pub mod archive;
pub mod cache;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod helper;
pub mod index;
pub mod logging;
pub mod mount;
pub mod mountpoint;
pub mod names;
pub mod oci;
pub mod read;
pub mod registry;
pub mod source;
pub mod stats;
pub mod stop;
pub mod target;
pub mod tree;

#[cfg(test)]
mod core_tests;
