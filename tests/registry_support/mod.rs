//! Support for tests/registry.rs: real `docker-registry` servers configured with htpasswd
//! or token auth and TLS, a token service that signs JWTs, a tiny HTTP server for proxies
//! and a "CDN", certificates made per test, and an `orasfs mount` runner with its own
//! environment. Everything started here stops when dropped.

#![allow(dead_code)]

pub mod certs;
pub mod distribution;
pub mod http;
pub mod orasfs;
pub mod token;
