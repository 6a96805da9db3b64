#![no_main]
//! Checkpoint and GPT-2 model bytes: parse, derive the shape, load into the layout.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tf) = gptrain::tensorfile::parse(data) {
        if let Ok(cfg) = gptrain::checkpoint::hf_shape(&tf, std::path::Path::new("."), 2) {
            if cfg.n_layer < 64 && cfg.n_embd < 4096 && cfg.padded_vocab_size < 1 << 20 && cfg.block_size < 1 << 16 {
                let _ = gptrain::checkpoint::from_hf(&tf, &cfg, &gptrain::model::ParamLayout::new(&cfg));
            }
        }
    }
    let _ = gptrain::data::pickle::parse(data);
});
