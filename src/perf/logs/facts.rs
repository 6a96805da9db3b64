//! The run's shape where a log states it: global batch size, sequence length, world size,
//! total iterations, tokens per iteration, and (Megatron's argument dump) the model's shape.
//! Every line is searched; the first statement of each fact wins.

use regex::Regex;
use std::sync::LazyLock;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Facts {
    /// Samples per iteration, whole job.
    pub global_batch: Option<u64>,
    /// Samples per GPU per micro-step (torchtitan's `local batch size`).
    pub local_batch: Option<u64>,
    pub seq_len: Option<u64>,
    pub world_size: Option<u64>,
    pub total_iters: Option<u64>,
    /// nanoGPT's `tokens per iteration will be: N`.
    pub stated_tokens_per_iter: Option<u64>,
    /// gptrain's banner `tokens per iteration: 768 ; FLOPs per iteration: 3.97G` (its text
    /// log; its metrics.jsonl's `start` record has the exact figure).
    pub stated_flops_per_iter: Option<f64>,
    pub n_layer: Option<u64>,
    pub n_embd: Option<u64>,
    pub n_head: Option<u64>,
    pub vocab: Option<u64>,
    /// Each fact's line, shortened: where it came from.
    pub sources: Vec<String>,
}

struct Fact {
    re: Regex,
    set: fn(&mut Facts) -> &mut Option<u64>,
    name: &'static str,
}

// `key ....... 1024` (Megatron's argument dump), `key: 1024`, `key = 1024`, `--key 1024`
const SEP: &str = r"[\s.:=]*";
// a whole number, with thousands separators (`1,000`) or without
const N: &str = r"(\d{1,3}(?:,\d{3})+|\d+)";

/// gptrain's `FLOPs per iteration: 3.97G` (as `si` prints it: k, M, G, T, P or none) and
/// `estimate`'s `FLOPs per iteration: 2.382e13`.
static FLOPS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\bFLOPs per iteration:\s*(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*([kMGTP])?(?:\s|;|,|\(|$)").unwrap());

static FACTS: LazyLock<Vec<Fact>> = LazyLock::new(|| {
    let f = |pat: &str, set: fn(&mut Facts) -> &mut Option<u64>, name: &'static str| Fact {
        re: Regex::new(&format!(r"(?i){pat}")).unwrap(),
        set,
        name,
    };
    vec![
        f(
            &format!(r"(?:\bglobal[_ -]batch[_ -]size|total train batch size \(w\. parallel, distributed & accumulation\)){SEP}{N}"),
            |x| &mut x.global_batch,
            "global batch size",
        ),
        f(&format!(r"\blocal[_ -]batch[_ -]size{SEP}{N}"), |x| &mut x.local_batch, "local batch size"),
        f(
            &format!(r"\b(?:seq[_ -]length|seq[_ -]len|sequence[_ -]length|max[_ -]seq[_ -]length|block[_ -]size){SEP}{N}"),
            |x| &mut x.seq_len,
            "sequence length",
        ),
        f(
            // fairseq: `training on 8 devices (GPUs/TPUs)`, earlier `training on 8 GPUs`
            &format!(r"\b(?:world[_ -]size|num[_ -]gpus|ngpus){SEP}{N}|\btraining on (\d+) (?:devices|GPUs)\b"),
            |x| &mut x.world_size,
            "world size",
        ),
        f(
            &format!(
                // fairseq's config, a Python dict: `'max_update': 3000`
                r"(?:\btrain[_ -]iters|\bmax[_ -]iters|\bmax[_ -]steps|\bmax[_ -]update'?|total optimization steps|\btotal steps|\btrain[_ -]steps){SEP}{N}"
            ),
            |x| &mut x.total_iters,
            "total iterations",
        ),
        f(r"tokens per iteration(?: will be)?:\s*([\d,]+)", |x| &mut x.stated_tokens_per_iter, "tokens per iteration"),
        f(&format!(r"^\s*num[_ ]layers{SEP}(\d+)"), |x| &mut x.n_layer, "layers"),
        f(&format!(r"^\s*hidden[_ ]size{SEP}(\d+)"), |x| &mut x.n_embd, "hidden size"),
        f(&format!(r"^\s*num[_ ]attention[_ ]heads{SEP}(\d+)"), |x| &mut x.n_head, "heads"),
        f(
            &format!(r"(?:^\s*padded[_ ]vocab[_ ]size{SEP}|^(?:> )?padded vocab \(size: \d+\) with \d+ dummy tokens \(new size: )(\d+)"),
            |x| &mut x.vocab,
            "vocabulary",
        ),
    ]
});

impl Facts {
    /// Looks for facts in one (cleaned) line.
    pub fn scan(&mut self, line: &str) {
        // cheap filter: every fact's line has one of these
        let l = line.to_ascii_lowercase();
        if !["batch", "seq", "world", "gpus", "iter", "step", "block", "layers", "hidden", "heads", "vocab", "update", "training on"]
            .iter()
            .any(|k| l.contains(k))
        {
            return;
        }
        if self.stated_flops_per_iter.is_none() {
            if let Some(c) = FLOPS.captures(line) {
                let scale = match c.get(2).map(|m| m.as_str()) {
                    Some("k") => 1e3,
                    Some("M") => 1e6,
                    Some("G") => 1e9,
                    Some("T") => 1e12,
                    Some("P") => 1e15,
                    _ => 1.0,
                };
                let v = c[1].parse::<f64>().ok().map(|x| x * scale).filter(|x| x.is_finite() && *x > 0.0);
                if let Some(v) = v {
                    self.stated_flops_per_iter = Some(v);
                    let m = c.get(0).unwrap().as_str().trim_end_matches([' ', ';', ',', '(']);
                    let shown = format!("{}{}", &c[1], c.get(2).map_or("", |u| u.as_str()));
                    self.sources.push(format!("FLOPs per iteration {shown} (`{m}`)"));
                }
            }
        }
        for f in FACTS.iter() {
            if (f.set)(self).is_some() {
                continue;
            }
            if let Some(c) = f.re.captures(line) {
                // the number: the first group that took part (a pattern may have alternatives)
                let Some(num) = c.iter().skip(1).flatten().next() else { continue };
                // `1.6M`, `2.5`: a rounded or scaled figure (nanotron's), not the fact
                let after = &line.as_bytes()[num.end()..];
                let decimal = after.len() > 1 && after[0] == b'.' && after[1].is_ascii_digit();
                if decimal || after.first().is_some_and(|b| b"KMGBTPE".contains(b)) {
                    continue;
                }
                let Some(v) = num.as_str().replace(',', "").parse::<u64>().ok().filter(|v| *v > 0) else { continue };
                *(f.set)(self) = Some(v);
                let m = c.get(0).unwrap().as_str().trim();
                let m: String = m.split_whitespace().filter(|w| !w.chars().all(|c| c == '.')).collect::<Vec<_>>().join(" ");
                let m = if m.len() > 60 { format!("{}...", &m[..m.char_indices().nth(57).map_or(m.len(), |x| x.0)]) } else { m };
                self.sources.push(format!("{} {v} (`{m}`)", f.name));
            }
        }
    }

    /// Tokens per iteration, whole job, as the log states them.
    pub fn tokens_per_iter(&self) -> Option<f64> {
        self.stated_tokens_per_iter.map(|t| t as f64).or(self.global_batch.zip(self.seq_len).map(|(b, t)| b as f64 * t as f64))
    }

    /// Tokens per GPU per iteration (torchtitan: local batch x sequence length).
    pub fn tokens_per_gpu_iter(&self) -> Option<f64> {
        self.local_batch.zip(self.seq_len).map(|(b, t)| b as f64 * t as f64)
    }
}
