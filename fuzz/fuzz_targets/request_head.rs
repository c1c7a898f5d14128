#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| microgate::gateway::fuzzing::request_head(bytes));
