#![no_main]
//! Training logs of any shape.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = gptrain::perf::logs::parse(&String::from_utf8_lossy(data)) {
        let _ = gptrain::perf::logs::steady(&p);
    }
});
