//! What the kernel talks to: the FUSE adapter ([`fuse`]) forwards each request to the
//! core ([`Fs`], in [`filesystem`]), which answers from the [`tree`] of names and the read
//! path; [`stats`] renders what the core counts, and [`error`] turns every failure into
//! an errno.

pub mod error;
pub mod filesystem;
pub mod fuse;
pub mod inodes;
pub mod stats;
pub mod tree;

pub use filesystem::{Attr, DirEntry, Fs, FsConfig};

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod read_fault_tests;
#[cfg(test)]
mod read_tests;
