use super::*;

const NANOGPT: &str = "Overriding config with config/train_shakespeare_char.py:
tokens per iteration will be: 16,384
number of parameters: 10.65M
step 0: train loss 4.2874, val loss 4.2823
iter 0: loss 4.2654, time 29681.23ms, mfu -100.00%
iter 10: loss 3.2425, time 102.37ms, mfu -100.00%
iter 20: loss 2.7945, time 101.89ms, mfu 3.65%
iter 30: loss 2.6115, time 103.02ms, mfu 3.65%
iter 40: loss 2.5349, time 102.51ms, mfu 3.65%
iter 50: loss 2.5123, time 102.10ms, mfu 3.66%
step 60: train loss 2.4, val loss 2.4
iter 60: loss 2.4895, time 2050.00ms, mfu 3.30%
iter 70: loss 2.4701, time 101.70ms, mfu 3.31%
";

#[test]
fn nanogpt_log_steady_state_drops_warmup_and_eval_spike() {
    let p = parse(NANOGPT).unwrap();
    assert_eq!((p.format, p.meaning), (Format::NanoGpt, Meaning::PerIteration));
    assert_eq!((p.samples.len(), p.evals, p.minus_100, p.skipped_lines), (8, 2, 2, 3));
    assert_eq!(p.facts.stated_tokens_per_iter, Some(16_384));
    let s = steady(&p);
    // iterations 0, 10 and 20 are warm-up: 30 settles the meter (10, 20, 30 agree)
    assert_eq!(s.warmup_dropped, 3);
    assert_eq!(s.outliers_dropped, 1);
    // hand computation: median of 103.02, 102.51, 102.10, 101.70
    assert!((s.steady_ms_per_iter - (102.10 + 102.51) / 2.0).abs() < 1e-9, "{}", s.steady_ms_per_iter);
}

#[test]
fn a_short_unsettled_log_still_has_a_steady_figure() {
    let p = parse(
        "iter 0: loss 4, time 500ms, mfu -100.00%\niter 1: loss 4, time 100ms, mfu -100.00%\niter 2: loss 4, time 150ms, mfu -100.00%\n",
    )
    .unwrap();
    let s = steady(&p);
    assert!(!s.warmup_settled);
    assert_eq!(s.warmup_dropped, 1);
    assert!((s.steady_ms_per_iter - 125.0).abs() < 1e-9, "{}", s.steady_ms_per_iter);
}

#[test]
fn llmc_logs_parse() {
    let cuda = "step    1/74 | loss 7.577 (+nanz)| norm 1.7 (+nanz)| lr 6.00e-04 | 68.60 ms | 51.4% bf16 MFU | 203213 tok/s\nstep    2/74 | loss 7.1 | norm 1.2 | lr 6.00e-04 | 60.00 ms | 52.0% bf16 MFU | 210000 tok/s\n";
    let p = parse(cuda).unwrap();
    assert_eq!(p.format, Format::LlmcCuda);
    assert_eq!(p.total_from_log, Some(74));
    assert!((p.samples[1].ms - 60.0).abs() < 1e-9 && (p.samples[1].log_mfu.unwrap() - 0.52).abs() < 1e-9);
    let cpu =
        "train dataset num_batches: 1192\nstep 0: train loss 5.356082 (took 1452.121 ms)\nstep 1: train loss 4.300639 (took 1398.32 ms)\n";
    let p = parse(cpu).unwrap();
    assert_eq!(p.format, Format::LlmcCpu);
    assert_eq!(p.samples.len(), 2);
    let old_cuda = "step    1/37: train loss 4.406481 (80.952 ms, 6324 tok/s)\nstep    2/37: train loss 4.1 (60.5 ms, 8400 tok/s)\n";
    let p = parse(old_cuda).unwrap();
    assert_eq!((p.samples.len(), p.total_from_log, p.samples[1].log_tok_s), (2, Some(37), Some(8400.0)));
    assert!((p.samples[0].ms - 80.952).abs() < 1e-9);
}

#[test]
fn a_log_without_iterations_is_an_error() {
    assert!(parse("hello\nworld\n").unwrap_err().to_string().contains("no training iteration line"));
    assert!(parse("").is_err());
    // a forced format that is not there
    let e = parse_with(NANOGPT, &Options { format: Some(Format::Megatron), ..Options::default() }).unwrap_err();
    assert!(e.to_string().contains("no Megatron-LM iteration line"), "{e}");
    assert!(Format::from_name("keras").is_err());
    assert_eq!(Format::from_name("HF").unwrap(), Format::HfTrainer);
    assert_eq!(Format::from_name("modded-nanogpt").unwrap(), Format::ModdedNanogpt);
}

#[test]
fn noise_before_a_line_is_stripped_and_its_timestamp_kept() {
    let cases = [
        ("[rank0]:[titan] 2025-06-16 22:30:50,322 - root - INFO - step: 200  loss:  6.1384", "step: 200  loss:  6.1384", Some(1.0)),
        ("> iter 10: loss 3.2, time 102.37ms", "iter 10: loss 3.2, time 102.37ms", None),
        ("    #  10%|█  | 40/400 [02:22<07:12,  1.20s/it]", "10%|█  | 40/400 [02:22<07:12,  1.20s/it]", None),
        (
            "[2023-07-25 21:03:17,269] [INFO] [timer.py:215:stop] epoch=0/micro_step=34/global_step=34, X",
            "epoch=0/micro_step=34/global_step=34, X",
            Some(1.0),
        ),
        ("\x1b[31mstep: \x1b[32m 5\x1b[39m", "step:  5", None),
        ("2024-05-01T10:00:00Z INFO step 3 dt 1.5s", "step 3 dt 1.5s", Some(1000.0)),
        ("0: iteration 10/ 100 |", "iteration 10/ 100 |", None),
        // a time of day alone, bracketed (rich) or bare (prime-rl), before its tags
        ("[12:00:01] INFO     step 3 dt 1.5s", "step 3 dt 1.5s", Some(1000.0)),
        ("03:26:55 [INFO] [TRAIN] [Rank 0] step: 8, loss: 0.97", "step: 8, loss: 0.97", Some(1000.0)),
        // a clock that is the line's content is no timestamp
        ("0:02:13 • 0:02:43 3.37it/s", "0:02:13 • 0:02:43 3.37it/s", None),
    ];
    for (raw, want, res) in cases {
        let (got, stamp) = clean(raw);
        assert_eq!(got, want, "{raw:?}");
        assert_eq!(stamp.map(|s| s.resolution_ms), res, "{raw:?}");
    }
    let (_, a) = clean("[2021-06-10 20:47:54,339] x");
    let (_, b) = clean("[2021-06-11 00:00:04,339] x");
    assert!((b.unwrap().secs - a.unwrap().secs - (3.0 * 3600.0 + 12.0 * 60.0 + 10.0)).abs() < 1e-6);
}

#[test]
fn interval_averages_count_iterations_by_the_counter() {
    let log = " iteration       10/    1000 | elapsed time per iteration (ms): 3000.0 | global batch size:     4 | lm loss: 1E+01 |
 iteration       20/    1000 | elapsed time per iteration (ms): 1600.0 | global batch size:     4 | lm loss: 1E+01 |
 iteration       30/    1000 | elapsed time per iteration (ms): 1610.0 | global batch size:     4 | lm loss: 1E+01 |
 iteration       40/    1000 | elapsed time per iteration (ms): 1620.0 | global batch size:     4 | lm loss: 1E+01 |
 iteration       50/    1000 | elapsed time per iteration (ms): 1630.0 | global batch size:     4 | lm loss: 1E+01 |
";
    let p = parse(log).unwrap();
    assert_eq!((p.format, p.meaning, p.batch_from_lines), (Format::Megatron, Meaning::IntervalAverage, Some(4)));
    assert_eq!(p.samples.iter().map(|s| s.span).collect::<Vec<_>>(), vec![10, 10, 10, 10, 10]);
    let s = steady(&p);
    // 10, 20, 30 are warm-up (40 settles the meter); steady: median of 1620 and 1630
    assert_eq!((s.warmup_dropped, s.iters_counted), (3, 20));
    assert!((s.steady_ms_per_iter - 1625.0).abs() < 1e-9, "{}", s.steady_ms_per_iter);
}

#[test]
fn a_cumulative_clock_is_differenced_and_an_eval_refresh_moves_the_window() {
    // a tqdm bar read to the second: 10 steps per line; the bar is refreshed at step 30 after
    // an eval (40 s later) and the eval's own bar (total 7) is another stream
    let log = "  0%|          | 0/100 [00:00<?, ?it/s]
 10%|#         | 10/100 [00:50<01:00,  5.00s/it]
 20%|##        | 20/100 [01:01<00:50,  1.10s/it]
 30%|###       | 30/100 [01:12<00:50,  1.10s/it]
 43%|####      | 3/7 [00:02<00:01,  1.00s/it]
 30%|###       | 30/100 [01:52<00:50,  1.10s/it]
 40%|####      | 40/100 [02:03<00:40,  1.10s/it]
 50%|#####     | 50/100 [02:14<00:40,  1.10s/it]
";
    let p = parse(log).unwrap();
    assert_eq!((p.format, p.meaning), (Format::HfTrainer, Meaning::CumulativeClock));
    let ms: Vec<f64> = p.samples.iter().map(|s| s.ms).collect();
    assert_eq!(ms, vec![5000.0, 1100.0, 1100.0, 1100.0, 1100.0]);
}

#[test]
fn timestamps_time_lines_that_have_nothing_else() {
    let log = "[2022-03-11 02:06:28,700] [INFO] [logging.py:69:log_dist] [Rank 0] step=20, skipped=2, lr=[5e-05], mom=[[0.9, 0.999]]
[2022-03-11 02:06:43,800] [INFO] [logging.py:69:log_dist] [Rank 0] step=30, skipped=2, lr=[5e-05], mom=[[0.9, 0.999]]
[2022-03-11 02:06:43,800] [INFO] [timer.py:189:stop] 0/30, SamplesPerSec=83.4, MemAllocated=0.26GB, MaxMemAllocated=9.02GB
[2022-03-11 02:06:58,985] [INFO] [logging.py:69:log_dist] [Rank 0] step=40, skipped=2, lr=[5e-05], mom=[[0.9, 0.999]]
";
    let p = parse(log).unwrap();
    assert_eq!((p.format, p.meaning), (Format::DeepSpeed, Meaning::Timestamps));
    let ms: Vec<f64> = p.samples.iter().map(|s| (s.ms * 1000.0).round() / 1000.0).collect();
    assert_eq!(ms, vec![1510.0, 1518.5]);
}

#[test]
fn a_rate_needs_the_units_per_iteration() {
    let log = "step: 10  loss:  6.0  memory: 49.66GiB(52.28%)  tps: 5,000  tflops: 339.16  mfu: 34.29%\nstep: 20  loss:  6.0  memory: 49.66GiB(52.28%)  tps: 4,000  tflops: 339.16  mfu: 34.29%\n";
    assert!(parse(log).unwrap_err().to_string().contains("--batch-size"));
    let p = parse_with(log, &Options { tokens_per_iter: Some(16_000.0), gpus: Some(2.0), ..Options::default() }).unwrap();
    assert_eq!((p.format, p.meaning), (Format::Torchtitan, Meaning::Throughput));
    // 8000 tokens per GPU per step at 5000 and 4000 tokens/s per GPU
    assert_eq!(p.samples.iter().map(|s| s.ms).collect::<Vec<_>>(), vec![1600.0, 2000.0]);
    // tokens from flags without --gpus are one GPU's, whatever world size the log states
    let stated = format!("world size: 8\n{log}");
    let p = parse_with(&stated, &Options { tokens_per_iter: Some(8_000.0), ..Options::default() }).unwrap();
    assert_eq!(p.samples.iter().map(|s| s.ms).collect::<Vec<_>>(), vec![1600.0, 2000.0]);
}

#[test]
fn blocks_of_lines_are_read_as_one_line_each() {
    // Composer: a header, tab-indented metrics; the old form repeats the header on each line
    let text = "[batch=3/10]:\n\t Train time/batch: 2\n\t Train time/sample: 16\n\t Train throughput/samples_per_sec: 4.0000\nnot in it\n\
                [epoch=0][batch=4/10]: Train time/batch: 3\n[epoch=0][batch=4/10]: Train throughput/batches_per_sec: 0.5000\n";
    let joined = blocks::join(text);
    let lines: Vec<&str> = joined.lines().collect();
    assert_eq!(
        lines,
        vec![
            "[batch=3/10]: | Train time/batch: 2 | Train time/sample: 16 | Train throughput/samples_per_sec: 4.0000",
            "not in it",
            "[epoch=0][batch=4/10]: Train time/batch: 3 | Train throughput/batches_per_sec: 0.5000",
        ]
    );
    // 8 samples a batch at 4 samples/s; the old form by batches/s (its counter: time/batch + 1)
    let hits: Vec<_> = lines.iter().filter_map(|l| blocks::composer(l)).collect();
    let Hit::Iter(a) = &hits[0].1 else { panic!("{hits:?}") };
    let Hit::Iter(b) = &hits[1].1 else { panic!("{hits:?}") };
    assert_eq!((a.iter, a.time, a.total), (3, Time::Window(2000.0), Some(10)));
    assert_eq!((b.iter, b.time, b.total), (4, Time::Window(2000.0), None));
    // OLMo: the header keeps its prefix (and so its timestamp); 4-space `name=value` lines
    let text = "2024-08-06 09:59:26.181\tn:0\tolmo.train:908\tINFO\t[step=2/100,epoch=0]\n    train/CrossEntropyLoss=7.5\n    throughput/device/batches_per_second=0.2500\n";
    let joined = blocks::join(text);
    assert!(
        joined.trim_end().ends_with("[step=2/100,epoch=0] | train/CrossEntropyLoss=7.5 | throughput/device/batches_per_second=0.2500"),
        "{joined}"
    );
    let (line, stamp) = clean(joined.trim_end());
    assert!(stamp.is_some());
    let Some((Format::Olmo, Hit::Iter(r))) = blocks::olmo(&line) else { panic!("{line}") };
    assert_eq!((r.iter, r.time, r.loss), (2, Time::Window(4000.0), Some(7.5)));
    // text without a block is passed through as it is
    assert!(matches!(blocks::join(NANOGPT), std::borrow::Cow::Borrowed(_)));
}

#[test]
fn a_rounded_or_scaled_figure_is_no_fact() {
    let mut f = Facts::default();
    f.scan("global_batch_size: 1.6M | sequence_length: 2.5K");
    assert_eq!((f.global_batch, f.seq_len), (None, None));
    f.scan("'max_update': 3000, 'update_freq': [4]");
    f.scan("training on 8 devices (GPUs/TPUs)");
    f.scan("global_batch_size: 512 | seq_len 1024.");
    assert_eq!((f.total_iters, f.world_size, f.global_batch, f.seq_len), (Some(3000), Some(8), Some(512), Some(1024)));
    // thousands separators; a Python dict's quote only after max_update; nodes are not GPUs
    let mut f = Facts::default();
    f.scan("  Total optimization steps = 1,000");
    f.scan("{'global_batch_size': 16, 'max_seq_length': 512}");
    f.scan("Training on 2 nodes with 8 GPUs each");
    assert_eq!((f.total_iters, f.global_batch, f.seq_len, f.world_size), (Some(1000), None, None, None));
}

#[test]
fn an_excerpt_from_the_middle_of_a_run_has_no_warmup() {
    // litgpt's older shape, iterations 76-83 of a run (alternating optimizer-step iterations,
    // each ending its 2-iteration cycle): all four cycles are steady; their means 206.135,
    // 206.655, 206.51, 206.875: median = (206.51 + 206.655) / 2
    let log = "iter 76 step 38: loss 10.8259, iter time: 197.87ms
iter 77 step 39: loss 10.8259, iter time: 214.40ms (optimizer.step)
iter 78 step 39: loss 10.8259, iter time: 198.00ms
iter 79 step 40: loss 10.8259, iter time: 215.31ms (optimizer.step)
iter 80 step 40: loss 10.8259, iter time: 197.59ms
iter 81 step 41: loss 10.8259, iter time: 215.43ms (optimizer.step)
iter 82 step 41: loss 10.8259, iter time: 198.35ms
iter 83 step 42: loss 10.8259, iter time: 215.40ms (optimizer.step)
";
    let p = parse(log).unwrap();
    assert_eq!((p.format, p.from_start), (Format::Litgpt, false));
    let s = steady(&p);
    assert_eq!(s.warmup_dropped, 0);
    assert!((s.steady_ms_per_iter - (206.51 + 206.655) / 2.0).abs() < 1e-9, "{}", s.steady_ms_per_iter);
    assert_eq!((s.iters_seen, s.iters_counted), (4, 8));
}

#[test]
fn a_progress_bars_first_step_is_a_sample_of_its_own() {
    // Lightning, one second resolution: step 1 at 8 s (start-up), then 3 s per step; the first
    // window is 0-1 alone (8 s, warm-up), the next 1-5 (12 s / 4 steps)
    let log = "Epoch 0:   0%|          | 0/18 [00:00<?, ?it/s]
Epoch 0:   6%|▌         | 1/18 [00:08<02:29,  8.77s/it, loss=10.473, v_num=193315]
Epoch 0:  11%|█         | 2/18 [00:11<01:33,  5.82s/it, loss=10.473, v_num=193315]
Epoch 0:  17%|█▋        | 3/18 [00:14<01:13,  4.87s/it, loss=10.224, v_num=193315]
Epoch 0:  22%|██▏       | 4/18 [00:17<01:02,  4.47s/it, loss=10.047, v_num=193315]
Epoch 0:  28%|██▊       | 5/18 [00:20<00:53,  4.14s/it, loss=9.926, v_num=193315]
";
    let p = parse(log).unwrap();
    assert_eq!(p.samples.iter().map(|s| s.ms).collect::<Vec<_>>(), vec![8000.0, 3000.0]);
    assert!((steady(&p).steady_ms_per_iter - 3000.0).abs() < 1e-9);
    // the rich bar, and NeMo's own step time in the bar
    let rich = "Epoch 0/9  ━━━━━━━━━━━━━━━ 10/100 0:00:20 • 0:03:00 0.50it/s v_num: 0\nEpoch 0/9  ━━━━━━━━━━━━━━━ 20/100 0:00:40 • 0:02:40 0.50it/s v_num: 0\n";
    let p = parse(rich).unwrap();
    assert_eq!((p.format, p.samples[0].ms), (Format::Lightning, 2000.0));
    let nemo = "Epoch 0: :  50%|█████     | 50/100 [01:00<01:00, reduced_train_loss=2.3, global_step=49.0, train_step_timing in s=1.21]\n";
    let p = parse(nemo).unwrap();
    assert_eq!((p.meaning, p.samples[0].ms), (Meaning::PerIteration, 1210.0));
}

#[test]
fn the_fallback_reads_counters_with_a_time_or_a_rate() {
    let cases: [(&str, f64); 5] = [
        // build-nanogpt
        ("step    12 | loss: 9.003456 | lr 6.0000e-04 | norm: 1.2345 | dt: 1230.56ms | tok/sec: 424242.42", 1230.56),
        // a bracketed counter is not noise
        ("[Epoch 1/10][Batch 100/500] loss: 2.31 1.21 s/step", 1210.0),
        ("2024-01-01 10:00:00 | INFO | global_step=120, loss=2.2, 0.8 it/s", 1250.0),
        ("Iter: 100, loss: 2.3, time: 0.52s, data_time: 0.01", 520.0),
        // `total time` is not an iteration's
        ("step 7/100 | total time: 3.5m | dt: 980ms", 980.0),
    ];
    for (line, ms) in cases {
        let p = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(p.format, Format::Generic, "{line}");
        assert!((p.samples[0].ms - ms).abs() < 1e-9, "{line}: {}", p.samples[0].ms);
    }
    // a counter with nothing to time it, and no timestamp, is skipped
    assert!(parse("step 5 of the recipe\nstep 6 of the recipe\n").is_err());
}

#[test]
fn an_eval_in_the_middle_of_a_clock_window_is_cut_out() {
    // a bar refreshed every step at 2 s/step; at step 7 an eval holds it 60 s, and the bar
    // is redrawn at step 7 when training resumes: the window 5-7 is dropped, not stretched
    let mut log = String::new();
    for n in 0..=12u32 {
        let secs = 2 * n + if n > 7 { 60 } else { 0 };
        log += &format!("{:3}%|#   | {n}/100 [{:02}:{:02}<01:00,  2.00s/it]\n", n, secs / 60, secs % 60);
        if n == 7 {
            log += &format!("  7%|#   | 7/100 [{:02}:{:02}<01:00,  2.00s/it]\n", (14 + 60) / 60, (14 + 60) % 60);
        }
    }
    let p = parse(&log).unwrap();
    assert!(p.samples.iter().all(|s| (s.ms - 2000.0).abs() < 1e-9), "{:?}", p.samples);
}

#[test]
fn json_lines_are_read_by_their_names() {
    let iter = |line: &str| match jsonl::jsonl(line) {
        Some((Format::Jsonl, Hit::Iter(r))) => r,
        other => panic!("{line}: {other:?}"),
    };
    // a time's unit: its name's ending, else seconds below 50 and ms above
    assert_eq!(iter(r#"{"step": 3, "dt": 0.41}"#).time, Time::PerIter(410.0));
    assert_eq!(iter(r#"{"step": 3, "dt": 410}"#).time, Time::PerIter(410.0));
    assert_eq!(iter(r#"{"iter": 3, "step_time_s": 60}"#).time, Time::PerIter(60000.0));
    assert_eq!(iter(r#"{"iter": 3, "iter_time_ms": 7.5}"#).time, Time::PerIter(7.5));
    assert_eq!(iter(r#"{"step": 2, "steps_per_second": 4}"#).time, Time::PerIter(250.0));
    // `time` or `elapsed` under 1e9 is a clock in one loop and an interval in another: no time;
    // above, a Unix timestamp (s, ms past 1e12, us past 1e15, ns past 1e17) or a date
    assert_eq!(jsonl::jsonl(r#"{"iter": 3, "loss": 2.0, "time": 0.25, "elapsed": 4.1}"#), None);
    let r = iter(r#"{"iter": 3, "time": 1764982803.25}"#);
    assert_eq!((r.time, r.stamp), (Time::Timestamp, Some(Stamp { secs: 1764982803.25, resolution_ms: 1.0 })));
    let r = iter(r#"{"iter": 3, "timestamp": 1764982803250}"#);
    assert_eq!(r.stamp, Some(Stamp { secs: 1764982803.25, resolution_ms: 1.0 }));
    for t in ["1764982803250000", "1764982803250000000"] {
        let secs = iter(&format!(r#"{{"iter": 3, "timestamp": {t}}}"#)).stamp.unwrap().secs;
        assert!((secs - 1764982803.25).abs() < 1e-6, "{t}: {secs}");
    }
    let r = iter(r#"{"iter": 3, "timestamp": "2025-12-06 10:00:01.5"}"#);
    assert_eq!(r.stamp.map(|s| (s.secs % 86400.0, s.resolution_ms)), Some((36001.5, 100.0)));
    // nested objects, names after `/`, the counter's most specific name, a rate and its columns
    let r =
        iter(r#"{"_step": 9, "trainer": {"global_step": 4}, "train/loss": 2.5, "perf/tokens_per_second_per_gpu": 4100.5, "mfu": 38.5}"#);
    assert_eq!((r.iter, r.loss, r.log_mfu), (4, Some(2.5), Some(0.385)));
    assert_eq!(r.time, Time::Throughput { per_s: 4100.5, unit: Unit::TokensPerGpu });
    // a rate under `device/` is one GPU's; the whole job's first (Composer logs both)
    let r = iter(r#"{"step": 4, "train/CrossEntropyLoss": 3.0, "throughput/device/tokens_per_second": 5000.0}"#);
    assert_eq!((r.loss, r.time), (Some(3.0), Time::Throughput { per_s: 5000.0, unit: Unit::TokensPerGpu }));
    let r = iter(r#"{"step": 4, "throughput/device/tokens_per_sec": 5000.0, "throughput/tokens_per_sec": 40000.0}"#);
    assert_eq!(
        (r.time, r.log_tok_s, r.log_tok_s_per_gpu),
        (Time::Throughput { per_s: 40000.0, unit: Unit::Tokens }, Some(40000.0), Some(5000.0))
    );
    // W&B: the clock before a rate; in whole seconds it gives way to a finer timestamp; a row
    // counted by `_step` alone is a step only with a training loss
    let r = iter(r#"{"_step": 4, "loss": 3.0, "tokens_per_second": 9.0, "_runtime": 8.5}"#);
    assert_eq!(r.time, Time::Cumulative { ms: 8500.0, resolution_ms: 1.0 });
    assert_eq!(iter(r#"{"_step": 2, "loss": 3.0, "_runtime": 14, "_timestamp": 1764982803.125}"#).time, Time::Timestamp);
    // (a row without one is kept for its time, to tell one step's rows: `wandb_steps`)
    let r = iter(r#"{"_step": 5, "lr": 0.001, "_runtime": 8.6}"#);
    assert!(r.wandb_row && r.loss.is_none());
    assert_eq!(jsonl::jsonl(r#"{"_step": 5, "lr": 0.001}"#), Some((Format::Jsonl, Hit::Info)));
    // litgpt: `iter_time` is a micro-batch's, counted by `iter`
    assert_eq!(iter(r#"{"iter": 80, "step": 10, "iter_time": 0.1}"#).iter, 80);
    // a validation loss without a training loss: an eval line; a validation time is no step's
    assert_eq!(jsonl::jsonl(r#"{"step": 20, "val/loss": 3.1, "dt": 0.4}"#), Some((Format::Jsonl, Hit::Eval)));
    assert_eq!(jsonl::jsonl(r#"{"step": 29, "evaluation": {"loss": 2.9}, "dt": 30.0}"#), Some((Format::Jsonl, Hit::Eval)));
    assert_eq!(iter(r#"{"step": 20, "loss": 3.0, "val/loss": 3.1, "dt": 0.4}"#).loss, Some(3.0));
    assert_eq!(jsonl::jsonl(r#"{"step": 20, "loss": 3.0, "val_step_time": 0.4}"#), None);
    // no counter, a counter that is no whole number or absurd, no time, an absurd time, not an object: nothing
    for line in [
        r#"{"loss": 3.0, "dt": 0.4}"#,
        r#"{"step": 2.5, "dt": 0.4}"#,
        r#"{"step": 1e300, "dt": 0.4}"#,
        r#"{"step": 2, "loss": 3.0}"#,
        r#"{"step": 2, "dt": 1e-300}"#,
        r#"{"step": 2, "dt_ms": 1e308}"#,
        "[1, 2]",
        r#"{"step": 2, "dt": 0.4"#,
    ] {
        assert_eq!(jsonl::jsonl(line), None, "{line}");
    }
    // gptrain's own lines go to its reader first; another loop's `"type"` to this one
    let text = "{\"type\":\"iter\",\"iter\":1,\"loss\":3.0,\"ms\":100.0}\n{\"type\":\"iter\",\"iter\":2,\"loss\":2.9,\"ms\":101.0}\n{\"type\":\"iter\",\"iter\":3,\"loss\":2.8,\"ms\":100.5}\n";
    assert_eq!(parse(text).unwrap().format, Format::Gptrain);
    let typed: String = (1..=5).map(|i| format!("{{\"type\": \"train\", \"step\": {i}, \"loss\": 3.0, \"dt\": 0.41}}\n")).collect();
    let p = parse(&typed).unwrap();
    assert_eq!((p.format, steady(&p).steady_ms_per_iter), (Format::Jsonl, 410.0));
    // JSON lines in a text log do not decide its format: the fallback's lines outnumber them
    let mut mixed = String::from("{\"step\": 0, \"timestamp\": \"2025-12-06 10:00:00\", \"msg\": \"resumed\"}\n");
    for i in 1..=20 {
        mixed += &format!("step {i} | loss: 2.99 | dt: 412.5ms\n");
        if i % 10 == 0 {
            mixed += &format!("{{\"step\": {i}, \"_runtime\": {i}, \"event\": \"checkpoint\", \"loss\": 2.9}}\n");
        }
    }
    let p = parse(&mixed).unwrap();
    assert_eq!((p.format, steady(&p).steady_ms_per_iter), (Format::Generic, 412.5));
}

#[test]
fn tensorboard_scalars_become_rows_by_step() {
    use std::collections::BTreeMap;
    // torch's SummaryWriter example (`Loss/train`, `Loss/test` every step), Megatron's
    // `... vs samples` axis, a `global_step` scalar, the Hugging Face summary at the end; an
    // evaluation 5 s after step 4's training scalars
    let mut sc: BTreeMap<(String, i64), (f64, f32)> = BTreeMap::new();
    let t0 = 1764982800.0;
    for step in 1..=8i64 {
        let wall = t0 + step as f64 * 0.4 + if step > 4 { 5.0 } else { 0.0 };
        sc.insert(("Loss/train".into(), step), (wall, 3.0));
        sc.insert(("Loss/test".into(), step), (wall + 0.001, 3.1));
        sc.insert(("global_step".into(), step), (wall, 99.0));
        sc.insert(("lm loss vs samples".into(), step * 512), (wall, 3.0));
    }
    sc.insert(("eval/accuracy".into(), 4), (t0 + 1.6 + 5.0, 0.5));
    sc.insert(("train/train_runtime".into(), 8), (t0 + 30.0, 30.0));
    let text = crate::tensorboard::json_lines(&sc, false);
    assert!(!text.contains("vs samples") && !text.contains("train_runtime") && !text.contains("global_step"), "{text}");
    let p = parse_with(&text, &Options { format: Some(Format::Tensorboard), ..Options::default() }).unwrap();
    // eight steps of 400 ms: the evaluation's 5 s (at step 4) in no interval
    assert_eq!((p.format, p.last_iter, p.evals), (Format::Tensorboard, 8, 8)); // `Loss/test` at every step
    assert!(p.samples.iter().all(|s| (s.ms - 400.0).abs() < 1e-3), "{:?}", p.samples);
    // a forced TensorBoard read of lines that are no JSON names TensorBoard
    let e = parse_with("step 1 | dt: 400ms\n", &Options { format: Some(Format::Tensorboard), ..Options::default() }).unwrap_err();
    assert!(e.to_string().contains("no TensorBoard events (each step's scalars and wall time) iteration line"), "{e}");
}

#[test]
fn times_without_a_unit_take_one_unit_for_the_whole_log() {
    // steps of 45 and 55 alternating: by the line, 45 s and 55 ms; by the log's median (55), ms
    let text: String = (1..=12).map(|i| format!("step {i} | loss: 2.9 | dt: {}\n", if i % 2 == 0 { 45 } else { 55 })).collect();
    let p = parse(&text).unwrap();
    assert!(p.samples.iter().all(|s| s.ms == 45.0 || s.ms == 55.0), "{:?}", p.samples);
    let json: String = (1..=12).map(|i| format!("{{\"step\": {i}, \"dt\": {}}}\n", if i % 2 == 0 { 45.5 } else { 54.5 })).collect();
    let p = parse(&json).unwrap();
    assert!(p.samples.iter().all(|s| s.ms == 45.5 || s.ms == 54.5), "{:?}", p.samples);
    // a median under 50: seconds, every line (a 60 s checkpoint step too)
    let text: String = (1..=12).map(|i| format!("step {i} | loss: 2.9 | dt: {}\n", if i == 6 { 60.0 } else { 0.41 })).collect();
    let p = parse(&text).unwrap();
    assert!(p.samples.iter().all(|s| s.ms == 410.0 || s.ms == 60000.0), "{:?}", p.samples);
    // a unit the line states is kept
    let p = parse("step 1 | dt: 45ms\nstep 2 | dt: 55\nstep 3 | dt: 55\n").unwrap();
    assert_eq!(p.samples.iter().map(|s| s.ms).collect::<Vec<_>>(), [45.0, 55.0, 55.0]);
}

/// A resumed gptrain run's metrics.jsonl: a `start` record per process. The first session ran
/// at ~80 ms/iter, the resumed one at ~50 (another load on the machine).
fn resumed(first: &[f64], second: &[f64]) -> String {
    let mut t = String::from("{\"type\":\"start\",\"iter\":0,\"tokens_per_iter\":384}\n");
    for (i, ms) in first.iter().enumerate() {
        t += &format!("{{\"type\":\"iter\",\"iter\":{i},\"loss\":4.0,\"ms\":{ms}}}\n");
    }
    t += &format!("{{\"type\":\"checkpoint\",\"iter\":{}}}\n", first.len());
    t += &format!("{{\"type\":\"start\",\"iter\":{},\"tokens_per_iter\":384}}\n", first.len());
    for (i, ms) in second.iter().enumerate() {
        t += &format!("{{\"type\":\"iter\",\"iter\":{},\"loss\":4.0,\"ms\":{ms}}}\n", first.len() + i);
    }
    t
}

#[test]
fn each_start_record_begins_a_session_with_its_own_warm_up_and_outliers() {
    let first = [400.0, 160.0, 81.0, 80.0, 80.5, 79.5, 80.0, 81.0];
    let second = [300.0, 130.0, 50.0, 50.5, 49.5, 50.0, 50.2, 49.8, 50.1, 50.3, 49.9, 50.0];
    let p = parse(&resumed(&first, &second)).unwrap();
    assert_eq!(p.format, Format::Gptrain);
    assert_eq!(p.samples.iter().map(|s| s.session).collect::<std::collections::BTreeSet<_>>().len(), 2);
    let s = steady(&p);
    assert_eq!(s.sessions.len(), 2);
    // each session: its samples until three agree (81, 80, 80.5 settle the first: 80.5 is its
    // first steady one; 50, 50.5, 49.5 the second)
    assert_eq!((s.sessions[0].warmup_dropped, s.sessions[1].warmup_dropped), (4, 4));
    // outliers are judged within each session: the slower first session is not dropped
    assert_eq!((s.warmup_dropped, s.outliers_dropped, s.iters_counted), (8, 0, 12));
    assert_eq!((s.sessions[0].first_iter, s.sessions[0].last_iter, s.sessions[1].first_iter), (0, 7, 8));
    assert!((s.sessions[0].steady_ms_per_iter - 80.25).abs() < 1e-9, "{:?}", s.sessions);
    assert!((s.sessions[1].steady_ms_per_iter - 50.0).abs() < 1e-9, "{:?}", s.sessions);
    // the steady figure: the median of both sessions' steady samples (4 at ~80, 8 at ~50)
    assert!((s.steady_ms_per_iter - (50.1 + 50.2) / 2.0).abs() < 1e-9, "{}", s.steady_ms_per_iter);
    let note = s.sessions_note().unwrap();
    assert!(note.contains("2 sessions") && note.contains("iterations 0-7: 80.25 ms/iter") && note.contains("8-19: 50.00"), "{note}");
    // a file of one session has no note, and is read as before
    let one = parse(&resumed(&first, &[]).replace("{\"type\":\"checkpoint\",\"iter\":8}\n", "")).unwrap();
    let s1 = steady(&one);
    assert_eq!((s1.sessions.len(), s1.warmup_dropped, s1.iters_counted), (1, 4, 4));
    assert!(s1.sessions_note().is_none());
}

#[test]
fn a_resumed_session_too_short_to_settle_is_all_warm_up() {
    let first = [400.0, 160.0, 81.0, 80.0, 80.5, 79.5, 80.0, 81.0];
    let s = steady(&parse(&resumed(&first, &[300.0, 130.0])).unwrap());
    // (the first session's steady samples give the figure)
    assert_eq!((s.sessions[1].warmup_dropped, s.warmup_dropped, s.iters_counted), (2, 6, 4));
    assert!((s.steady_ms_per_iter - 80.25).abs() < 1e-9);
    assert!(s.warmup_settled);
}

#[test]
fn a_steady_figure_from_fewer_than_three_samples_is_flagged() {
    let mut p = parse(NANOGPT).unwrap();
    assert!(steady(&p).few_samples_warning(p.meaning).is_none());
    // an excerpt of one line: no warm-up, one sample
    p.samples.truncate(1);
    p.from_start = false;
    let s = steady(&p);
    let w = s.few_samples_warning(p.meaning).unwrap();
    assert!(w.contains("rests on one sample (1 iteration)") && w.contains("too few"), "{w}");
    p.samples = parse(NANOGPT).unwrap().samples[4..6].to_vec();
    let s = steady(&p);
    assert!(s.few_samples_warning(p.meaning).unwrap().contains("rests on 2 samples (2 iterations)"));
    // trainer_state.json's one figure for the whole run says what it is
    assert!(s.few_samples_warning(Meaning::RunAverage).is_none());
}

#[test]
fn gptrain_banner_states_its_flops_per_iteration() {
    let mut f = Facts::default();
    f.scan("tokens per iteration: 768 ; FLOPs per iteration: 3.97G");
    assert_eq!(f.stated_tokens_per_iter, Some(768));
    assert!((f.stated_flops_per_iter.unwrap() - 3.97e9).abs() < 1.0, "{:?}", f.stated_flops_per_iter);
    assert!(f.sources.iter().any(|s| s.starts_with("FLOPs per iteration 3.97G")), "{:?}", f.sources);
    for (line, want) in [
        ("tokens per iteration: 384 ; FLOPs per iteration: 71.66M", 71.66e6),
        ("tokens per iteration: 8 ; FLOPs per iteration: 512.00k", 512e3),
        ("tokens per iteration: 8 ; FLOPs per iteration: 999", 999.0),
        ("FLOPs per iteration: 1.20T", 1.2e12),
        ("FLOPs per iteration: 2.50P", 2.5e15),
        // `gptrain estimate`'s
        ("FLOPs per iteration: 2.382e13 (1.191e13 per micro-step)", 2.382e13),
    ] {
        let mut f = Facts::default();
        f.scan(line);
        let got = f.stated_flops_per_iter.unwrap_or_else(|| panic!("{line}"));
        assert!((got - want).abs() <= 1e-9 * want, "{line}: {got}");
    }
    // the first statement wins; a FLOPs figure of another kind is not this one
    let mut f = Facts::default();
    f.scan("FLOPs per iteration: 2G");
    f.scan("FLOPs per iteration: 3G");
    assert_eq!(f.stated_flops_per_iter, Some(2e9));
    let mut f = Facts::default();
    f.scan("model FLOPs per token: 6.2M, iteration 4");
    assert_eq!(f.stated_flops_per_iter, None);
}

#[test]
fn a_per_gpu_rate_in_the_fallback_is_no_time_in_seconds() {
    // modula's train-gpt.py (https://github.com/modula-systems/modula/pull/1): `tokens/gpu/sec:`
    // was read as `sec: 9400`, 9400 s a step; it is a rate of tokens per GPU
    let log = "step: 10     train loss: 3.20    test loss: 3.10    tokens/gpu/sec: 9000.00    MFU: 60.00%\n\
               step: 20     train loss: 2.80    test loss: 2.90    tokens/gpu/sec: 10000.00   MFU: 66.00%\n\
               step: 30     train loss: 2.70    test loss: 2.80    tokens/gpu/sec: 10000.00   MFU: 66.00%\n";
    let p = parse(log).unwrap_err();
    assert!(p.to_string().contains("throughput column needs the batch"), "{p}");
    // 8192 tokens per GPU per step at 10,000 tokens/s/GPU: 819.2 ms
    let opt = Options { tokens_per_iter: Some(8192.0), ..Options::default() };
    let p = parse_with(log, &opt).unwrap();
    assert_eq!((p.format, p.meaning), (Format::Generic, Meaning::Throughput));
    assert!((p.samples[2].ms - 819.2).abs() < 1e-9, "{:?}", p.samples);
    assert_eq!(p.samples[2].log_tok_s_per_gpu, Some(10000.0));
    // MaxText's `Tokens/s/device`, with its own `seconds:`: the seconds time the line
    let p = parse("completed step: 9, seconds: 1.250, TFLOP/s/device: 200.5, Tokens/s/device: 30000.0, loss: 2.5").unwrap();
    assert!((p.samples[0].ms - 1250.0).abs() < 1e-9 && p.samples[0].log_tok_s_per_gpu == Some(30000.0), "{:?}", p.samples);
}

#[test]
fn fairseqs_progress_bar_is_read_by_its_clock() {
    // fairseq's tqdm bar (a terminal's capture, refreshes joined by carriage returns), in the
    // shape of https://github.com/facebookresearch/fairseq/issues/416 and /247; before, no line
    // was recognised. Epoch 1: 2.5 s a batch for the first 10, then 2.0; its valid bar is an
    // eval; epoch 2's clock restarts at 0 and runs 2.1 s a batch. 100 batches an epoch.
    let bar = |e: u64, n: u64, secs: u64, upd: u64| {
        format!(
            "| epoch {e:03}:  {:2}%|▌   | {n}/100 [{:02}:{:02}<01:00,  2.00s/it, loss=4.404, nll_loss=2.815, ppl=7.04, wps=18745, ups=0.5, wpb=6109, bsz=225, num_updates={upd}, lr=0.0001, gn",
            n,
            secs / 60,
            secs % 60
        )
    };
    let mut log = String::new();
    for k in 0..=10u64 {
        log += &bar(1, 10 * k, if k == 0 { 0 } else { 25 + 20 * (k - 1) }, 10 * k.saturating_sub(1));
        log.push('\r');
    }
    log += "\n| epoch 001 | valid on 'valid' subset:  50%|▌   | 5/10 [00:03<00:03,  1.50it/s]\n";
    log += "| epoch 001 | loss 4.404 | nll_loss 2.815 | ppl 7.04 | wps 18745 | ups 0.5 | wpb 6109 | bsz 225 | num_updates 100 | lr 0.0001 | gnorm 0.893 | clip 0% | oom 0 | wall 215 | train_wall 185\n";
    for k in 0..=9u64 {
        log += &bar(2, 10 * k, 21 * k, 100 + 10 * k);
        log.push('\r');
    }
    let p = parse(&log).unwrap();
    assert_eq!((p.format, p.meaning, p.evals, p.last_iter), (Format::Fairseq, Meaning::CumulativeClock, 1, 190));
    let ms: Vec<f64> = p.samples.iter().map(|s| s.ms).collect();
    assert_eq!(ms, [vec![2500.0], vec![2000.0; 9], vec![2100.0; 9]].concat());
    // warm-up 2.5, 2.0, 2.0; of seven 2.0 and nine 2.1 the median is 2.1
    assert_eq!(steady(&p).steady_ms_per_iter, 2100.0);
    // `--format fairseq` (and torchtune) read their bars, which the Hugging Face reader parses
    let opt = Options { format: Some(Format::Fairseq), ..Options::default() };
    assert_eq!(parse_with(&log, &opt).unwrap().samples.len(), 19);
    let tune = "1|10|Loss: 2.5:   0%|▏   | 10/500 [00:20<16:20,  2.00s/it]\n1|20|Loss: 2.4:   0%|▏   | 20/500 [00:40<16:00,  2.00s/it]\n";
    let opt = Options { format: Some(Format::Torchtune), ..Options::default() };
    assert_eq!(parse_with(tune, &opt).unwrap().format, Format::Torchtune);
}

#[test]
fn a_clock_written_as_text_is_read_to_the_second() {
    // LLaMA-Factory's `elapsed_time` past a day: Python's `str(timedelta)`
    let line = r#"{"current_steps": 10, "total_steps": 20, "loss": 1.0, "elapsed_time": "1 day, 2:03:04", "throughput": 50.5}"#;
    match jsonl::jsonl(line) {
        Some((Format::Jsonl, Hit::Iter(r))) => {
            assert_eq!((r.iter, r.total), (10, Some(20)));
            assert_eq!(r.time, Time::Cumulative { ms: (86_400.0 + 7384.0) * 1e3, resolution_ms: 1e3 });
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn w_and_b_rows_one_step_logged_are_one_step() {
    // a loop that calls wandb.log twice a step (its loss, then its learning rate, 0.4 ms
    // later), 500 ms a step, and a validation row after step 5: `_step` counts 2 a step (and
    // 1 for the validation), which read 250 ms/step before
    let t0 = 1_764_982_800.0;
    let (mut log, mut row) = (String::new(), 0);
    let mut push = |log: &mut String, fields: &str, t: f64| {
        *log += &format!("{{{fields}, \"_step\": {row}, \"_runtime\": {:.4}, \"_timestamp\": {:.4}}}\n", t - t0, t);
        row += 1;
    };
    for k in 0..12 {
        let t = t0 + 0.5 * k as f64 + if k > 5 { 3.0 } else { 0.0 };
        push(&mut log, &format!("\"train/loss\": {:.2}", 4.0 - 0.1 * k as f64), t);
        push(&mut log, "\"train/lr\": 0.0003", t + 0.0004);
        if k == 5 {
            push(&mut log, "\"val/loss\": 3.6", t + 3.0);
        }
    }
    let p = parse(&log).unwrap();
    assert_eq!((p.format, p.meaning, p.evals, p.iter_lines, p.other_iter_lines), (Format::Jsonl, Meaning::CumulativeClock, 1, 12, 0));
    assert_eq!((p.first_iter, p.last_iter), (0, 11));
    let ms: Vec<f64> = p.samples.iter().map(|s| (s.ms * 1e3).round() / 1e3).collect();
    // step 6's interval holds the 3 s validation
    assert_eq!(ms, [500.0, 500.0, 500.0, 500.0, 500.0, 3500.0, 500.0, 500.0, 500.0, 500.0, 500.0]);
    // in whole seconds the rows cannot be told apart: `_step` stands (less the rows without a loss)
    let coarse: String = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut o = v.as_object().unwrap().clone();
            o.remove("_timestamp");
            o.insert("_runtime".into(), serde_json::json!(v["_runtime"].as_f64().unwrap().floor() as u64));
            serde_json::Value::Object(o).to_string() + "\n"
        })
        .collect();
    let p = parse(&coarse).unwrap();
    assert_eq!((p.iter_lines, p.last_iter), (12, 23));
}

#[test]
fn verls_step_timing_is_one_steps_time() {
    // verl's console line (https://github.com/verl-project/verl/issues/1208): `timing_s/step`
    // is the step's seconds; before, no time was found and no line recognised. Behind Ray's
    // `(TaskRunner pid=...)`; `timing_s/gen` and the rest are parts of the step
    let line = |step: u32, secs: f64| {
        format!("(TaskRunner pid=4242) step:{step} - actor/pg_loss:0.002 - perf/mfu/actor:0.310 - critic/score/mean:0.120 - response_length/mean:310.500 - timing_s/gen:60.125 - timing_s/update_actor:12.500 - timing_s/step:{secs:.3} - timing_per_token_ms/adv:0.001\n")
    };
    let log: String = [(1, 95.0), (2, 80.25), (3, 80.5), (4, 80.0)].iter().map(|&(s, t)| line(s, t)).collect();
    let p = parse(&log).unwrap();
    assert_eq!((p.format, p.meaning), (Format::Generic, Meaning::PerIteration));
    assert_eq!(p.samples.iter().map(|s| s.ms).collect::<Vec<_>>(), [95000.0, 80250.0, 80500.0, 80000.0]);
    // a time under a namespace is still a time (`perf/time_per_step`); only a rate's `/sec` is not
    let p = parse("step:7 - perf/throughput:1500.2 - perf/time_per_step:42.5").unwrap();
    assert_eq!(p.samples[0].ms, 42500.0);
}

#[test]
fn a_bare_time_of_day_times_the_line() {
    // prime-rl's trainer (https://github.com/PrimeIntellect-ai/prime-rl/pull/20): a time of day,
    // then a rate that needs the batch; before, the time was not seen and the log asked for the
    // batch. To the second, differenced over at least ten: 7 s (the first alone), then 15 s / 2
    let log = "03:26:55 [INFO] [TRAIN] [Rank 0] step: 8, loss: 0.9760, tokens_per_second: 76900.12, mfu: 42.40\n\
               03:27:02 [INFO] [TRAIN] [Rank 0] step: 9, loss: 0.9751, tokens_per_second: 76950.50, mfu: 42.43\n\
               03:27:10 [INFO] [TRAIN] [Rank 0] step: 10, loss: 0.9742, tokens_per_second: 76910.77, mfu: 42.41\n\
               03:27:17 [INFO] [TRAIN] [Rank 0] step: 11, loss: 0.9733, tokens_per_second: 76930.31, mfu: 42.42\n";
    let p = parse(log).unwrap();
    assert_eq!((p.format, p.meaning), (Format::Generic, Meaning::Timestamps));
    assert_eq!(p.samples.iter().map(|s| s.ms).collect::<Vec<_>>(), [7000.0, 7500.0]);
}

#[test]
fn llmcs_minus_100_mfu_is_no_measurement() {
    // llm.c on a GPU it has no peak for (https://github.com/karpathy/llm.c/issues/796, a
    // Blackwell card) prints `-100.0% bf16 MFU`; the report said "the log's own MFU column: -100.0%"
    let log = "step   61/74 | loss 3.201000 (+nanz)| norm 1.4000 (+nanz)| lr 3.00e-04 | 40.10 ms | -100.0% bf16 MFU | 102000 tok/s\n\
               step   62/74 | loss 3.300000 (+nanz)| norm 1.3000 (+nanz)| lr 3.00e-04 | 40.20 ms | -100.0% bf16 MFU | 101900 tok/s\n";
    let p = parse(log).unwrap();
    assert_eq!(p.format, Format::LlmcCuda);
    assert!(p.samples.iter().all(|s| s.log_mfu.is_none()), "{:?}", p.samples);
    assert_eq!(steady(&p).log_mfu, None);
}

#[test]
fn nemo2_and_tf_slim_step_times() {
    // NeMo 2 (https://github.com/NVIDIA-BioNeMo/bionemo-recipes/pull/740): `train_step_timing in
    // s:` is the step's seconds, and the last validation's `val_loss` rides on every training
    // line, which made each an eval line before (nothing recognised)
    let nemo = "Training epoch 0, iteration 40/99 | lr: 3e-05 | consumed_samples: 41 | global_batch_size: 1 | global_step: 40 | reduced_train_loss: 1.25 | train_step_timing in s: 0.0402 | val_loss: 4.2\n\
                Training epoch 0, iteration 41/99 | lr: 3e-05 | consumed_samples: 42 | global_batch_size: 1 | global_step: 41 | reduced_train_loss: 1.21 | train_step_timing in s: 0.0398 | val_loss: 4.2\n\
                Training epoch 0, iteration 42/99 | lr: 3e-05 | consumed_samples: 43 | global_batch_size: 1 | global_step: 42 | reduced_train_loss: 1.19 | train_step_timing in s: 0.0405 | val_loss: 4.2\n";
    let p = parse(nemo).unwrap();
    assert_eq!((p.format, p.meaning, p.evals, p.total_from_log), (Format::Generic, Meaning::PerIteration, 0, Some(99)));
    assert_eq!(p.samples.iter().map(|s| (s.ms * 1e3).round() / 1e3).collect::<Vec<_>>(), [40.2, 39.8, 40.5]);
    // TF-slim (https://github.com/tensorflow/models/issues/2980): `(17.053 sec/step)`
    let slim = "INFO:tensorflow:global step 2: loss = 70.1000 (18.250 sec/step)\nINFO:tensorflow:global step 3: loss = 68.2000 (17.500 sec/step)\n";
    let p = parse(slim).unwrap();
    assert_eq!(p.samples.iter().map(|s| s.ms).collect::<Vec<_>>(), [18250.0, 17500.0]);
    // that log prints every line twice (two handlers): one iteration each, not two
    let twice: String = slim.lines().flat_map(|l| [l, l]).map(|l| format!("{l}\n")).collect();
    let p = parse(&twice).unwrap();
    assert_eq!((p.iter_lines, p.samples.len()), (4, 2));
}
