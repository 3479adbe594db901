//! The command line and its wiring: parsing ([`cli`]), the mount(8) helper ([`helper`]),
//! what to mount ([`target`]), the mount itself and its daemon ([`mount`], [`daemon`],
//! [`mountpoint`], [`stop`]), logging ([`logging`]) and `orasfs index` ([`index`]).

pub mod cli;
pub mod config;
pub mod connect;
pub mod daemon;
pub mod helper;
pub mod index;
pub mod logging;
pub mod mount;
pub mod mountpoint;
pub mod stop;
pub mod target;
