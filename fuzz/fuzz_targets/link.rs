//! `Link` pagination headers (`registry::headers::parse_link_next`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::link(data));
