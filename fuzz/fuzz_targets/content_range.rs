//! `Content-Range` and `Retry-After` (`registry::headers`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::content_range(data));
