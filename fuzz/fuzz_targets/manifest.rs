//! Manifest and index parsing (`oci::Manifest::parse`) with every content type the
//! transport may claim, and the naming rules applied to whatever parses.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::manifest(data));
