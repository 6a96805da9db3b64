//! Data parallelism over processes, as torchrun launches them (RANK, WORLD_SIZE, MASTER_PORT):
//! two CPU ranks train what one process trains, rank 0 alone speaks and checkpoints, and a
//! rank that stops or fails stops the run cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A small character-level run with dropout: 4 micro-batches per iteration.
const RUN: &[&str] = &[
    "train",
    "--set",
    "max_iters=12",
    "--set",
    "eval_interval=6",
    "--set",
    "eval_iters=3",
    "--set",
    "log_interval=1",
    "--set",
    "dropout=0.1",
    "--set",
    "gradient_accumulation_steps=4",
    "--set",
    "batch_size=4",
    "--set",
    "n_layer=2",
    "--set",
    "n_embd=32",
    "--set",
    "block_size=32",
    "--set",
    "device=cpu",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts rank `rank` of `size` in `dir` (out_dir `out`), with `extra` settings and variables.
fn rank(rank: usize, size: usize, port: u16, dir: &Path, out: &str, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gptrain"));
    c.args(RUN).args(["--set", "n_head=2", "--set", "threads=1", "--set", &format!("out_dir={out}")]).args(extra);
    c.current_dir(dir).env("XDG_CACHE_HOME", dir).env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", port.to_string());
    c.env("RANK", rank.to_string()).env("WORLD_SIZE", size.to_string()).env("LOCAL_RANK", rank.to_string());
    c.env("LOCAL_WORLD_SIZE", size.to_string()).envs(env.iter().copied());
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Runs `size` ranks in `dir` (out_dir `out`) to the end: (exit code, stdout, stderr) of each.
fn ranks(size: usize, dir: &Path, out: &str, extra: &[&str]) -> Vec<(i32, String, String)> {
    let port = free_port();
    let children: Vec<Child> = (0..size).rev().map(|r| rank(r, size, port, dir, out, extra, &[])).collect();
    let mut done: Vec<_> = children.into_iter().map(finish).collect();
    done.reverse();
    done
}

/// (exit code, stdout, stderr) of a finished child.
fn finish(c: Child) -> (i32, String, String) {
    let o = c.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The iteration, eval and final lines, without their times.
fn losses(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("iter ") && !l.starts_with("iterations") || l.starts_with("step ") || l.starts_with("final:"))
        .map(|l| l.split(", time").next().unwrap().to_string())
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("dp-{name}"))
}

#[test]
fn two_ranks_train_what_one_process_trains() {
    let d = tmp("equal");
    let (code, alone, err) = finish(rank(0, 1, free_port(), &d, "alone", &[], &[]));
    assert_eq!(code, 0, "{err}");
    let port = free_port();
    // a rank may have another thread count (a machine's cores shared out): same settings otherwise
    let r1 = rank(1, 2, port, &d, "pair", &["--set", "threads=2"], &[]);
    let (code0, out0, err0) = finish(rank(0, 2, port, &d, "pair", &[], &[]));
    let (code1, out1, err1) = finish(r1);
    assert_eq!((code0, code1), (0, 0), "rank 0: {err0}\nrank 1: {err1}");
    assert!(out0.contains("data parallel: 2 ranks (torchrun), 2 micro-batches each of the 4 per iteration"), "{out0}");
    // the same global batches and dropout masks: the same losses, to the 4 digits printed
    // (the gradients are summed in another order, so the bits may differ)
    let (a, b) = (losses(&alone), losses(&out0));
    assert_eq!(a.len(), 16, "{alone}");
    assert_eq!(a, b);
    // rank 0 speaks and checkpoints for the run
    assert!(out1.is_empty() && err1.is_empty(), "rank 1 said: {out1}{err1}");
    assert!(d.join("pair/ckpt-000012/model.safetensors").is_file());
    let records = |run: &str| std::fs::read_to_string(d.join(run).join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(records("pair"), records("alone"), "one record of the run, rank 0's");
}

#[test]
fn a_stop_signal_to_any_rank_stops_every_rank_at_the_same_iteration() {
    let d = tmp("stop");
    let port = free_port();
    // with the optimiser state split (ZeRO-1): the stop's checkpoint gathers every rank's share
    let long = ["--set", "max_iters=100000", "--set", "eval_interval=100000", "--set", "log_interval=1", "--set", "zero_stage=1"];
    let mut r1 = rank(1, 2, port, &d, "out", &long, &[]);
    let r0 = rank(0, 2, port, &d, "out", &long, &[]);
    // once rank 0 has logged an iteration, both ranks have their signal handlers
    let metrics = d.join("out/metrics.jsonl");
    for _ in 0..600 {
        if std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\"iter\"")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok = Command::new("kill").args(["-TERM", &r1.id().to_string()]).status().unwrap().success();
    assert!(ok);
    let (code0, out0, err0) = finish(r0);
    let status1 = r1.wait().unwrap();
    assert_eq!(code0, 130, "{out0}{err0}");
    assert_eq!(status1.code(), Some(0));
    let last = err0.lines().last().unwrap();
    assert!(last.starts_with("interrupted after iteration") && last.contains("checkpoint written to"), "{err0}");
    let ckpt = last.split("checkpoint written to ").nth(1).unwrap().split(' ').next().unwrap();
    assert!(d.join(ckpt).join("model.safetensors").is_file(), "{ckpt}");
    // whole: one process resumes from it for an iteration more
    let it: u64 = ckpt.rsplit("ckpt-").next().unwrap().trim_end_matches('/').parse().unwrap();
    let more = [format!("max_iters={}", it + 1), "init_from=resume".into(), "eval_interval=100000".into()];
    let more: Vec<&str> = more.iter().flat_map(|m| ["--set", m.as_str()]).collect();
    let (code, out, err) = finish(rank(0, 1, free_port(), &d, "out", &more, &[]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("iter {it}: loss")), "{out}");
}

#[test]
fn a_rank_that_fails_or_never_comes_ends_the_run_with_one_line() {
    let d = tmp("fail");
    // rank 1 never starts: rank 0 gives up at the timeout
    let (code, _, err) = finish(rank(0, 2, free_port(), &d, "out", &[], &[("GPTRAIN_DIST_TIMEOUT_S", "1")]));
    assert_eq!(code, 1);
    assert!(err.trim_end().ends_with("(GPTRAIN_DIST_TIMEOUT_S)") && err.contains("rank(s) 1 did not connect"), "{err}");
    // rank 1 with other settings is refused, and says so
    let port = free_port();
    let r1 = rank(1, 2, port, &d, "out", &["--set", "seed=7"], &[]);
    let (code0, _, err0) = finish(rank(0, 2, port, &d, "out", &[], &[]));
    let (code1, _, err1) = finish(r1);
    assert_eq!((code0, code1), (1, 1));
    assert!(err0.contains("error: rank 1 runs another configuration than rank 0"), "{err0}");
    assert!(err1.contains("error: rank 1: rank 0 refused rank 1"), "{err1}");
    // a world the accumulation does not split over
    let (code, _, err) = finish(rank(0, 3, free_port(), &d, "out", &[], &[]));
    assert_eq!(code, 1);
    assert!(err.contains("gradient_accumulation_steps = 4 does not split over 3 ranks"), "{err}");
    for e in [err0, err1, err] {
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// GPU ranks on `tools/cuda-emu`: two ranks that share its one GPU train what one process trains
/// there, their gradients summed through host memory (NCCL refuses ranks on one GPU); two that
/// emulate two GPUs (`GPTRAIN_EMU_GPU`: other UUIDs) sum by the emulator's NCCL, to the same bits; ranks
/// that ask for `cuda` take the GPU of their local rank, and a local rank with no GPU is one line;
/// ranks on the CPU and on a GPU are refused.
#[test]
fn gpu_ranks_train_what_one_gpu_process_trains() {
    let Some(emu) = common::emu_or_skip("gpu_ranks_train_what_one_gpu_process_trains") else { return };
    let d = tmp("gpu");
    let e = emu.to_str().unwrap();
    let cache = emu.join("cache");
    let env = [("LD_LIBRARY_PATH", e), ("GPTRAIN_CUDA_LIB_DIR", e), ("XDG_CACHE_HOME", cache.to_str().unwrap())];
    let gpu = ["--set", "device=cuda:0", "--set", "dtype=float32", "--set", "max_iters=4", "--set", "eval_interval=2"];
    let (code, alone, err) = finish(rank(0, 1, free_port(), &d, "alone", &gpu, &env));
    assert_eq!(code, 0, "{err}");
    assert!(alone.contains("device: cuda-emu"), "{alone}");
    let port = free_port();
    let r1 = rank(1, 2, port, &d, "pair", &gpu, &env);
    let (code0, out0, err0) = finish(rank(0, 2, port, &d, "pair", &gpu, &env));
    let (code1, out1, err1) = finish(r1);
    assert_eq!((code0, code1), (0, 0), "rank 0: {err0}\nrank 1: {err1}");
    let staged = "the gradients from the GPUs through host memory (ranks 0 and 1 share one GPU, which NCCL allows only from 2.30";
    assert!(out0.contains(staged), "{out0}");
    let (a, b) = (losses(&alone), losses(&out0));
    assert_eq!(a.len(), 8, "{alone}");
    assert_eq!(a, b);
    assert!(out1.is_empty() && err1.is_empty(), "rank 1 said: {out1}{err1}");
    // two emulated GPUs: NCCL
    let port = free_port();
    let bus = |b| [&env[..], &[("GPTRAIN_EMU_GPU", b)]].concat();
    let r1 = rank(1, 2, port, &d, "nccl", &gpu, &bus("1"));
    let (code0, out0, err0) = finish(rank(0, 2, port, &d, "nccl", &gpu, &bus("0")));
    let (code1, out1, err1) = finish(r1);
    assert_eq!((code0, code1), (0, 0), "rank 0: {err0}\nrank 1: {err1}");
    assert!(out0.contains("gradients summed by NCCL 2.99.0 on the GPUs, losses through rank 0"), "{out0}");
    assert_eq!(losses(&out0), a);
    assert!(out1.is_empty() && err1.is_empty(), "rank 1 said: {out1}{err1}");
    let model = |run: &str| std::fs::read(d.join(run).join("ckpt-000004/model.safetensors")).unwrap();
    assert!(model("nccl") == model("pair"), "NCCL's sums (in rank order on the emulator) differ from the host's");
    // NCCL failing to start on rank 1 only: rank 0, waiting inside NCCL's start (the
    // emulator's gives up after 30 s, a real one never), sees rank 1 end and stops at once
    let port = free_port();
    let fail = [&bus("1")[..], &[("GPTRAIN_EMU_NCCL_INIT_FAIL", "1")]].concat();
    let r1 = rank(1, 2, port, &d, "nccl-fails", &gpu, &fail);
    let t0 = std::time::Instant::now();
    let r0 = rank(0, 2, port, &d, "nccl-fails", &gpu, &bus("0"));
    let pid0 = r0.id();
    let (code0, _, err0) = finish(r0);
    let (code1, _, err1) = finish(r1);
    // the emulated communicator rank 0 was waiting in (named by its pid), left by its exit
    for f in std::fs::read_dir("/dev/shm").into_iter().flatten().flatten() {
        if f.file_name().to_string_lossy().starts_with(&format!("gptrain-emu-nccl-{pid0}-")) {
            let _ = std::fs::remove_file(f.path());
        }
    }
    assert_eq!((code0, code1), (1, 1), "rank 0: {err0}\nrank 1: {err1}");
    assert!(err1.contains("NCCL ncclCommInitRank failed") && err1.lines().count() == 1, "{err1}");
    assert!(err0.contains("rank 1 stopped during NCCL's start (see its output for why)") && err0.lines().count() == 1, "{err0}");
    assert!(t0.elapsed() < Duration::from_secs(20), "rank 0 took {:?} to stop", t0.elapsed());
    // ZeRO-1 by NCCL: sums to each part's owner (grouped ncclReduce), updated parts from their
    // owners (grouped ncclBroadcast); bitwise the all-reduce's steps
    let port = free_port();
    let zero = [&gpu[..], &["--set", "zero_stage=1"]].concat();
    let r1 = rank(1, 2, port, &d, "zero", &zero, &bus("1"));
    let (code0, out0, err0) = finish(rank(0, 2, port, &d, "zero", &zero, &bus("0")));
    let (code1, out1, err1) = finish(r1);
    assert_eq!((code0, code1), (0, 0), "rank 0: {err0}\nrank 1: {err1}");
    assert!(out0.contains("gradients summed by NCCL") && out0.contains("ZeRO-1: the optimiser state split"), "{out0}");
    assert_eq!(losses(&out0), a);
    assert!(out1.is_empty() && err1.is_empty(), "rank 1 said: {out1}{err1}");
    let optim = |run: &str| std::fs::read(d.join(run).join("ckpt-000004/optim.safetensors")).unwrap();
    assert!(model("zero") == model("nccl") && optim("zero") == optim("nccl"), "ZeRO-1's checkpoint differs from the all-reduce's");
    // one GPU shared, by an NCCL that allows it (2.30+, asked to)
    let port = free_port();
    let shared = [&env[..], &[("NCCL_MULTI_RANK_GPU_ENABLE", "1")]].concat();
    let r1 = rank(1, 2, port, &d, "shared", &gpu, &shared);
    let (code0, out0, err0) = finish(rank(0, 2, port, &d, "shared", &gpu, &shared));
    let (code1, _, err1) = finish(r1);
    assert_eq!((code0, code1), (0, 0), "rank 0: {err0}\nrank 1: {err1}");
    assert!(out0.contains("gradients summed by NCCL 2.99.0 on the GPUs"), "{out0}");
    assert_eq!(losses(&out0), a);
    // `auto` where one rank has a GPU and the other not: refused
    let port = free_port();
    let auto = [&gpu[..], &["--set", "device=auto"]].concat();
    let r1 = rank(1, 2, port, &d, "mixed", &auto, &[("LD_LIBRARY_PATH", "")]);
    let (code0, _, err0) = finish(rank(0, 2, port, &d, "mixed", &auto, &env));
    let (code1, _, err1) = finish(r1);
    assert_eq!((code0, code1), (1, 1), "rank 0: {err0}\nrank 1: {err1}");
    assert!(err0.starts_with("error: rank 1 trains on the CPU and rank 0 on a GPU: every rank must use the same kind of device"), "{err0}");
    // `device=cuda`: rank 1 takes cuda:1, which the emulator does not have
    let two_gpus = [&env[..], &[("GPTRAIN_EMU_GPUS", "2")]].concat();
    let (code, _, err) = finish(rank(2, 4, free_port(), &d, "out", &[&gpu[..], &["--set", "device=cuda"]].concat(), &two_gpus));
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");
    assert!(
        err.starts_with("error: rank 2: device cuda:2 does not exist: cuda:0 to cuda:1 do")
            && err.contains("each rank takes the GPU of its local rank (2 here)"),
        "{err}"
    );
}

/// A GPU rank whose process ends inside an NCCL sum, after the check-in before it: a real NCCL
/// reports no error to the others (its kernels wait on for the dead peer; the emulator's
/// GPTRAIN_EMU_NCCL_HANG does the same, its stream left busy), so rank 0 must see rank 1's
/// connection close while it waits, and stop with one line naming it, long before
/// GPTRAIN_DIST_TIMEOUT_S.
#[test]
fn a_gpu_rank_that_dies_inside_an_nccl_sum_is_named_at_once() {
    let Some(emu) = common::emu_or_skip("a_gpu_rank_that_dies_inside_an_nccl_sum_is_named_at_once") else { return };
    let d = tmp("gpu-dies");
    let e = emu.to_str().unwrap();
    let cache = emu.join("cache");
    let env = [("LD_LIBRARY_PATH", e), ("GPTRAIN_CUDA_LIB_DIR", e), ("XDG_CACHE_HOME", cache.to_str().unwrap())];
    let gpu = ["--set", "device=cuda:0", "--set", "dtype=float32", "--set", "max_iters=4", "--set", "eval_interval=100"];
    let env0 = [&env[..], &[("GPTRAIN_EMU_GPU", "0"), ("GPTRAIN_EMU_NCCL_HANG", "2"), ("GPTRAIN_DIST_TIMEOUT_S", "60")]].concat();
    let env1 = [&env[..], &[("GPTRAIN_EMU_GPU", "1"), ("GPTRAIN_EMU_NCCL_EXIT_AT", "2"), ("GPTRAIN_DIST_TIMEOUT_S", "60")]].concat();
    let port = free_port();
    let r1 = rank(1, 2, port, &d, "out", &gpu, &env1);
    let r0 = rank(0, 2, port, &d, "out", &gpu, &env0);
    let pid0 = r0.id();
    let (code1, _, err1) = finish(r1);
    let died = std::time::Instant::now();
    let (code0, out0, err0) = finish(r0);
    assert_eq!((code0, code1), (1, 3), "rank 0: {err0}\nrank 1: {err1}");
    assert!(out0.contains("gradients summed by NCCL"), "{out0}");
    assert!(err1.contains("ends inside its collective 2"), "{err1}");
    assert_eq!(err0.lines().count(), 1, "{err0}");
    assert!(err0.contains("rank 1 stopped during NCCL's sum over the ranks (see its output for why)"), "{err0}");
    assert!(died.elapsed() < Duration::from_secs(20), "rank 0 took {:?} after rank 1's end", died.elapsed());
    // the communicator rank 0 left behind (the emulator's segments, named by rank 0's pid)
    for f in std::fs::read_dir("/dev/shm").into_iter().flatten().flatten() {
        if f.file_name().to_string_lossy().starts_with(&format!("gptrain-emu-nccl-{pid0}-")) {
            let _ = std::fs::remove_file(f.path());
        }
    }
    std::fs::remove_dir_all(d).ok();
}

/// Ranks that start from different weights (here: each resumed from its own out_dir, at the same
/// iteration) are stopped at the start with one line naming the rank: the ranks never send
/// weights, so they would train apart.
#[test]
fn ranks_that_hold_different_weights_are_stopped_at_the_start() {
    let d = tmp("weights");
    let (a, b) = (d.join("a"), d.join("b"));
    for (dir, lr) in [(&a, "learning_rate=1e-3"), (&b, "learning_rate=2e-3")] {
        std::fs::create_dir_all(dir).unwrap();
        let (code, _, err) = finish(rank(0, 1, free_port(), dir, "out", &["--set", "max_iters=4", "--set", lr], &[]));
        assert_eq!(code, 0, "{err}");
    }
    let port = free_port();
    let resume = ["--set", "max_iters=6", "--set", "init_from=resume"];
    let r1 = rank(1, 2, port, &b, "out", &resume, &[]);
    let (code0, _, err0) = finish(rank(0, 2, port, &a, "out", &resume, &[]));
    let (code1, _, err1) = finish(r1);
    assert_eq!((code0, code1), (1, 1), "rank 0: {err0}\nrank 1: {err1}");
    let want = "rank 1's weights differ from rank 0's at iteration 4: did every rank read the same out_dir";
    assert!(err0.starts_with(&format!("error: {want}")) && err0.lines().count() == 1, "{err0}");
    assert!(err1.starts_with(&format!("error: rank 1: {want}")), "{err1}");
}

/// ZeRO-1 (`zero_stage=1`): each rank keeps the AdamW moments, and under mixed precision the
/// f32 master weights, of its own pieces only, and sends the others what it updated. The steps
/// are bitwise those of ranks that each keep everything: the same loss lines and byte-equal
/// checkpoints (written whole, in today's format), at two ranks, four (stacked tensors cut
/// between ranks) and twelve (five owning nothing), in float32 and bfloat16, resumed or not;
/// and a ZeRO-1 checkpoint resumes on other numbers of ranks.
#[test]
fn zero_1_splits_the_optimiser_state_and_changes_no_bit() {
    let d = tmp("zero");
    let file = |run: &str, it: u32, f: &str| std::fs::read(d.join(run).join(format!("ckpt-{it:06}/{f}.safetensors"))).unwrap();
    let same_checkpoints = |a: &str, b: &str, it: u32| {
        for f in ["model", "optim"] {
            assert!(file(a, it, f) == file(b, it, f), "{f}.safetensors of {a} and {b} differ");
        }
    };
    let ok = |runs: Vec<(i32, String, String)>| -> String {
        for (r, (code, out, err)) in runs.iter().enumerate() {
            assert_eq!(*code, 0, "rank {r}: {err}");
            assert!(r == 0 || out.is_empty() && err.is_empty(), "rank {r} said: {out}{err}");
        }
        runs.into_iter().next().unwrap().1
    };
    // clipped at every step, so that the gradient norm, which ZeRO-1 puts together from its
    // parts, moves the weights
    let bf16 = ["--set", "dtype=bfloat16", "--set", "grad_clip=0.1"];
    let zero = [&bf16[..], &["--set", "zero_stage=1"]].concat();
    let whole = ok(ranks(2, &d, "whole", &bf16));
    let split = ok(ranks(2, &d, "split", &zero));
    assert!(split.contains("ZeRO-1: the optimiser state split over the 2 ranks; rank 0 keeps"), "{split}");
    assert!(!whole.contains("ZeRO"), "{whole}");
    assert_eq!(losses(&split), losses(&whole));
    same_checkpoints("whole", "split", 6);
    same_checkpoints("whole", "split", 12);
    // resumed halfway: the moments and master weights come back to their owners
    ok(ranks(2, &d, "resumed", &[&zero[..], &["--set", "max_iters=6"]].concat()));
    ok(ranks(2, &d, "resumed", &[&zero[..], &["--set", "init_from=resume"]].concat()));
    same_checkpoints("split", "resumed", 12);
    // four ranks in float32, 512 wide: stacked tensors in a piece per layer, cut between ranks
    let wide = ["--set", "n_embd=512", "--set", "max_iters=4", "--set", "eval_interval=2", "--set", "grad_clip=0.1"];
    let whole4 = ok(ranks(4, &d, "whole4", &wide));
    let split4 = ok(ranks(4, &d, "split4", &[&wide[..], &["--set", "zero_stage=1"]].concat()));
    assert_eq!(losses(&split4), losses(&whole4));
    same_checkpoints("whole4", "split4", 4);
    // its checkpoint is whole: it resumes on two ranks without ZeRO-1, and on one process
    let more = ["--set", "max_iters=6", "--set", "init_from=resume"];
    let two = ok(ranks(2, &d, "split4", &[&wide[..], &more[..]].concat()));
    assert!(two.contains("resuming from") && two.contains("iter 5: loss"), "{two}");
    let (code, one, err) =
        finish(rank(0, 1, free_port(), &d, "split4", &[&wide[..], &["--set", "max_iters=8", "--set", "init_from=resume"]].concat(), &[]));
    assert_eq!(code, 0, "{err}");
    assert!(one.contains("iter 7: loss"), "{one}");
    // twelve ranks of a model of nine small pieces, which the split puts in seven runs: five
    // ranks own nothing
    let nine = [
        "--set",
        "bias=false",
        "--set",
        "n_layer=1",
        "--set",
        "gradient_accumulation_steps=12",
        "--set",
        "batch_size=1",
        "--set",
        "max_iters=2",
        "--set",
        "eval_interval=2",
    ];
    let whole12 = ok(ranks(12, &d, "whole12", &nine));
    let split12 = ok(ranks(12, &d, "split12", &[&nine[..], &["--set", "zero_stage=1"]].concat()));
    assert!(split12.contains("rank 0 keeps"), "{split12}");
    assert_eq!(losses(&split12), losses(&whole12));
    same_checkpoints("whole12", "split12", 2);
    // one process: nothing to split, said once
    let (code, out, err) = finish(rank(0, 1, free_port(), &d, "alone", &["--set", "zero_stage=1", "--set", "max_iters=2"], &[]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("note: zero_stage = 1 splits the optimiser state over a data-parallel run's ranks; one process keeps it whole"),
        "{out}"
    );
    let (code, _, err) = finish(rank(0, 1, free_port(), &d, "bad", &["--set", "zero_stage=2"], &[]));
    assert_eq!(code, 1);
    assert!(err.starts_with("error: `zero_stage` must be 0 or 1 (got 2)") && err.lines().count() == 1, "{err}");
}
