//! `WWW-Authenticate` challenges (`registry::headers::parse_challenge`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::www_authenticate(data));
