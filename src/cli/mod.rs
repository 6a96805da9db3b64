//! The command line: parses flags into a validated plan, runs it, and is the only place that
//! prints.

mod bench;
mod check;
mod commands;
mod estimate;
mod keys;
mod logs;
mod printer;

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "gptrain", version, about = "Train GPT-2-family models on CPU and NVIDIA GPUs, and tell the truth about time.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Config flags shared by every command that takes a config.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// A TOML config file (or a nanoGPT `config/*.py`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A named preset: shakespeare-char, shakespeare-char-cpu, gpt2-124m, rtx4070-40m.
    #[arg(long)]
    pub preset: Option<String>,
    /// Override one knob, e.g. `--set max_iters=200` (repeatable; applied last, in order;
    /// `gptrain config` lists every key).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tokenize text into train.bin/val.bin (nanoGPT's format) plus meta.
    Prepare {
        /// A text file or a folder of .txt files (default: the built-in Shakespeare corpus).
        #[arg(long)]
        input: Option<PathBuf>,
        /// `char` (vocabulary from the text) or `gpt2` (GPT-2 BPE).
        #[arg(long, default_value = "char")]
        tokenizer: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Worker threads (default: physical cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Train (with no flags: the `shakespeare-char-cpu` preset on the built-in corpus).
    Train(ConfigArgs),
    /// Sample from the newest checkpoint in out_dir (or init_from = a GPT-2 model.safetensors).
    Sample(ConfigArgs),
    /// Predict time per iteration, total time and memory of a config on a device.
    Estimate(estimate::EstimateArgs),
    /// Read a training log (nanoGPT, llm.c, gptrain, Hugging Face, Lightning, litgpt, torchtitan, Megatron, DeepSpeed, modded-nanogpt, or any line with a counter and a time): steady speed, true MFU, ETA.
    Logs(logs::LogsArgs),
    /// Time full training steps on synthetic tokens: ms/step, tokens/s, GFLOP/s, MFU.
    Bench(bench::BenchArgs),
    /// List every config key with its default and meaning, and the presets (with --preset,
    /// --config or --set: the values they resolve to).
    Config(ConfigArgs),
    /// Check this setup: every op and ten training steps against the reference kernels.
    Check(check::CheckArgs),
    /// Plot train/val loss and tokens/s from a run's metrics.jsonl (PNG and SVG).
    Plot {
        /// The run's metrics.jsonl (in its out_dir).
        metrics: PathBuf,
        /// Output path without extension (default: beside the metrics file).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = crate::backend::cpu::simd::check_env().and_then(|()| match cli.cmd {
        Cmd::Prepare { input, tokenizer, out, threads } => commands::prepare(input, &tokenizer, &out, threads),
        Cmd::Train(a) => commands::train(&a),
        Cmd::Sample(a) => commands::sample(&a),
        Cmd::Estimate(a) => estimate::estimate(&a),
        Cmd::Logs(a) => logs::logs(&a),
        Cmd::Bench(a) => bench::bench(&a),
        Cmd::Check(a) => check::check(&a),
        Cmd::Plot { metrics, out } => commands::plot(&metrics, out),
        Cmd::Config(a) => keys::config(&a),
    });
    match result {
        Ok(()) => 0,
        // a stop asked for (Ctrl-C, SIGTERM) is no error: it says where the checkpoint is
        // written with `writeln!`: a closed standard error must not turn the exit into a panic
        Err(e) if e.downcast_ref::<crate::train::Interrupted>().is_some() => {
            let _ = writeln!(std::io::stderr(), "{e:#}");
            130
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            1
        }
    }
}
