#![no_main]
//! Token files of any length and content.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = std::env::temp_dir().join(format!("gptrain-fuzz-tok-{}.bin", std::process::id()));
    if std::fs::write(&f, data).is_ok() {
        for bytes in [2, 4] {
            if let Ok(t) = gptrain::data::Tokens::open(&f, bytes, 1000) {
                let _ = (0..t.len()).map(|i| t.get(i)).max();
            }
        }
    }
});
