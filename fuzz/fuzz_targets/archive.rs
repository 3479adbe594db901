//! Archive index reader: tar and tar+gzip headers, the member table, the stored index.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::archive(data));
