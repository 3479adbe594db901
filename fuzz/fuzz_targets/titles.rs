//! Title rules: `names::title_components` on any string and `names::place_layers` on
//! any set of titles.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::titles(data));
