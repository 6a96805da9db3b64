#![no_main]
//! Config text (TOML or nanoGPT .py) and `--set` strings: an error or a config, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("gptrain-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for ext in ["toml", "py"] {
        let f = dir.join(format!("c.{ext}"));
        if std::fs::write(&f, data).is_ok() {
            let _ = gptrain::config::resolve(None, Some(&f), &[]);
        }
    }
    let _ = gptrain::config::resolve(None, None, &[String::from_utf8_lossy(data).into_owned()]);
});
