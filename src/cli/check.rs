//! `gptrain check`: the setup, every op against the reference, ten training steps, a verdict.

use super::printer::say;
use crate::backend::cpu::Cpu;
use crate::backend::{Backend, Precision};
use crate::check::{self, check_ops, check_training, Describe, OpCheck, Target, TrainCheck, Verdict};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct CheckArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// float32, bfloat16, float16 or all (default: float32, and the others where the backend
    /// stores them).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Precisions `gptrain check` offers, in the order it checks them.
const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

/// `--dtype`: the precisions it names (None: the default, decided per backend).
fn dtypes(s: Option<&str>) -> Result<Option<Vec<Precision>>> {
    match s.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(None),
        Some("all") => Ok(Some(ALL.to_vec())),
        Some(d) => match Precision::parse(d).filter(|p| ALL.contains(p)) {
            Some(p) => Ok(Some(vec![p])),
            None => bail!("unknown dtype `{d}` for check; use float32, bfloat16, float16 or all"),
        },
    }
}

pub fn check(a: &CheckArgs) -> Result<()> {
    let wanted = dtypes(a.dtype.as_deref())?;
    match Target::parse(&a.device)? {
        Target::Cpu => super::commands::pool(a.threads.unwrap_or(0))?.install(|| check_on(Cpu::FAST, wanted, a.json, |_| None, None)),
        Target::Cuda(n) => {
            use crate::backend::cuda::{select, Cuda};
            let device = n.map_or("cuda".to_string(), |n| format!("cuda:{n}"));
            let select::Selected::Cuda { ordinal, .. } = select::select_as(&device, Precision::F32, "or check the CPU (`--device cpu`)")?
            else {
                bail!("device `{device}`: no CUDA device")
            };
            // a dtype `train` refuses on this card is skipped, not checked: cuBLASLt may reject
            // its products there, and a pass would promise what a run cannot use
            let card = select::find_card(Some(ordinal)).map_err(anyhow::Error::msg)?;
            let lacks = |p| select::lacks(&card, p);
            // the reference runs on the CPU's pool
            super::commands::pool(a.threads.unwrap_or(0))?
                .install(|| check_on(Cuda::new(ordinal, false)?, wanted, a.json, lacks, Some(CUDA_NEXT)))
        }
    }
}

/// What to do after a failed check on a GPU: the switches tools/gpu_check.sh tries to narrow a
/// failure down, the tested path meanwhile, and what a report needs.
const CUDA_NEXT: &str = "next: rerun with GPTRAIN_CUDA_SYNC=1 (a faulting kernel's error then names its op), with GPTRAIN_CUDA_ATTENTION=tiled (attention without tensor cores) and with GPTRAIN_CUDA_GELU_FUSION=0 (gptrain's GELU, not cuBLASLt's) to narrow it down; meanwhile train with --set device=cpu; please report it with this command's --json output";

/// Checks `backend` at the `wanted` precisions (default: float32, and bf16/fp16 where it stores
/// them and the device computes in them: `lacks` says why not), prints the report, and fails
/// when any check failed, after `next` (what to try) when given.
fn check_on<B: Backend + Describe + Clone>(
    backend: B,
    wanted: Option<Vec<Precision>>,
    json: bool,
    lacks: impl Fn(Precision) -> Option<String>,
    next: Option<&str>,
) -> Result<()> {
    let why_not = |p| lacks(p).or_else(|| check::unsupported(&backend, p));
    let (precisions, not_checked): (Vec<Precision>, Vec<Precision>) = match wanted {
        Some(w) => (w, Vec::new()),
        None => ALL.iter().partition(|&&p| p == Precision::F32 || why_not(p).is_none()),
    };
    // every precision's kernels compile at once, on parallel threads (a GPU's)
    for &p in precisions.iter().filter(|&&p| why_not(p).is_none()) {
        check::plans(p).iter().for_each(|plan| backend.prepare(plan));
    }
    let (mut ops, mut trains) = (Vec::new(), Vec::new());
    for &p in &precisions {
        match lacks(p) {
            Some(why) => {
                ops.extend(check::skipped_ops(p, &why));
                trains.push(TrainCheck::skipped(p, &why));
            }
            None => {
                ops.extend(check_ops(&backend, p)?);
                trains.push(check_training(backend.clone(), p)?);
            }
        }
    }
    let verdicts: Vec<&Verdict> = ops.iter().map(|o| &o.verdict).chain(trains.iter().map(|t| &t.verdict)).collect();
    let failed: Vec<String> = ops
        .iter()
        .filter(|o| o.verdict.failed())
        .map(|o| format!("{} ({})", o.op, o.dtype))
        .chain(trains.iter().filter(|t| t.verdict.failed()).map(|t| format!("training ({})", t.dtype)))
        .collect();
    let skipped = verdicts.iter().filter(|v| matches!(v, Verdict::Skip(_))).count();
    let passed = verdicts.iter().filter(|v| **v == &Verdict::Pass).count();
    let why_not: Vec<(&str, String)> = not_checked.iter().map(|&p| (p.name(), why_not(p).unwrap_or_default())).collect();
    if json {
        let setup: serde_json::Map<String, serde_json::Value> = backend.describe().into_iter().map(|(k, v)| (k, v.into())).collect();
        let v = serde_json::json!({
            "setup": setup, "candidate": backend.name(), "reference": Cpu::REFERENCE.name(), "ops": ops, "training": trains,
            "kernels": backend.warm_up_note(),
            "not_checked": why_not.iter().map(|(d, why)| serde_json::json!({ "dtype": d, "why": why })).collect::<Vec<_>>(),
            "passed": passed, "failed": failed.len(), "skipped": skipped,
        });
        say!("{v}");
    } else {
        print_report(&backend, &ops, &trains, &why_not);
        if let Some(note) = backend.warm_up_note() {
            say!("{note}");
        }
        let names: Vec<&str> = precisions.iter().map(|p| p.name()).collect();
        say!("summary: {passed} passed, {} failed, {skipped} skipped ({})", failed.len(), names.join(", "));
    }
    if !failed.is_empty() {
        if let Some(next) = next {
            // stdout holds the JSON object alone
            if json {
                eprintln!("{next}");
            } else {
                say!("{next}");
            }
        }
        bail!("check failed: {} of {} checks: {}", failed.len(), verdicts.len(), failed.join(", "));
    }
    // every check skipped (a dtype this card lacks, asked for by name): nothing was proven
    if passed == 0 && skipped > 0 {
        bail!("nothing checked: every check was skipped (see SKIP above); another --dtype checks what this device runs");
    }
    Ok(())
}

fn print_report<B: Backend + Describe>(backend: &B, ops: &[OpCheck], trains: &[TrainCheck], not_checked: &[(&str, String)]) {
    say!("setup:");
    for (k, v) in backend.describe() {
        say!("  {k:<9} {v}");
    }
    say!("ops: candidate {}, reference {} in fp32", backend.name(), Cpu::REFERENCE.name());
    say!(
        "  error = max |candidate - reference| / max(largest |reference| (largest change, for outputs added into), {:e}), worst output shown",
        check::FLOOR
    );
    let wo = ops.iter().map(|o| o.op.len()).max().unwrap_or(0);
    let ws = ops.iter().map(|o| o.shape.len()).max().unwrap_or(0);
    // as wide as the longest output name in parentheses, so that the tolerances line up
    let ww = ops.iter().map(|o| o.worst.len() + 2).chain(["(output)".len()]).max().unwrap_or(0);
    say!("  {:<wo$}  {:<ws$}  {:<5} {:>9} {:<ww$} {:>6}  result", "op", "shapes", "dtype", "max error", "(output)", "tol");
    for o in ops {
        let err = o.max_rel_err.map_or("-".into(), |e| format!("{e:.1e}"));
        let worst = if o.worst.is_empty() { String::new() } else { format!("({})", o.worst) };
        say!("  {:<wo$}  {:<ws$}  {:<5} {err:>9} {worst:<ww$} {:>6.0e}  {}", o.op, o.shape, o.dtype, o.tol, verdict(&o.verdict));
    }
    for t in trains {
        let diff = match t.max_rel_diff {
            Some(d) => {
                let (first, last) = (t.losses[0].1, t.losses[t.losses.len() - 1].1);
                format!(
                    ": reference loss {first:.4} -> {last:.4}, max relative difference {d:.1e} (step {}), tol {:.0e}",
                    t.worst_step, t.tol
                )
            }
            None => String::new(),
        };
        say!("training {}: {}{diff}  {}", t.dtype, t.what, verdict(&t.verdict));
    }
    for (dtype, why) in not_checked {
        say!("{dtype}: not checked: {why} (`--dtype all` lists its rows as SKIP)");
    }
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Pass => "PASS".into(),
        Verdict::Fail => "FAIL".into(),
        Verdict::Error(e) => format!("FAIL: {e}"),
        Verdict::Skip(why) => format!("SKIP: {why}"),
    }
}
