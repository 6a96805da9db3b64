//! `gptrain config`: every config key with its default and meaning, grouped as `config.rs`
//! declares them, and the presets; with `--preset`/`--config`/`--set`, the values they resolve to.

use super::commands::DEFAULT_PRESET;
use super::printer::say;
use super::ConfigArgs;
use crate::config::{self, Config, GROUPS, KNOBS, PRESETS};
use anyhow::Result;
use std::collections::HashMap;

/// Lines are wrapped to this width.
const WIDTH: usize = 100;
/// A value wider than this puts its meaning on the next line.
const VALUE_MAX: usize = 24;

/// Words of `text` in lines of at most `width` characters (a longer word gets its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// A row of the listing: name, value (may be empty), meaning.
type Row = (String, String, String);

/// Column widths of the name and of the value (0: no value column) that fit `rows`.
fn widths<'a>(rows: impl Iterator<Item = &'a Row> + Clone) -> (usize, usize) {
    let wk = rows.clone().map(|r| r.0.len()).max().unwrap_or(0);
    let wv = rows.map(|r| r.1.chars().count()).filter(|&n| n <= VALUE_MAX).max().unwrap_or(0);
    (wk, wv)
}

/// Prints rows as aligned columns of widths `(wk, wv)`, the meaning wrapped.
fn columns(rows: &[Row], (wk, wv): (usize, usize)) {
    let indent = if wv == 0 { 2 + wk + 2 } else { 2 + wk + 2 + wv + 2 };
    let pad = " ".repeat(indent);
    for (name, value, meaning) in rows {
        let lines = wrap(meaning, WIDTH.saturating_sub(indent).max(30));
        let head = if wv == 0 { format!("  {name:<wk$}  ") } else { format!("  {name:<wk$}  {value:<wv$}  ") };
        if value.chars().count() > wv {
            say!("{}", head.trim_end());
            for l in &lines {
                say!("{pad}{l}");
            }
        } else {
            say!("{head}{}", lines[0]);
            for l in &lines[1..] {
                say!("{pad}{l}");
            }
        }
    }
}

/// `gptrain config [--preset NAME] [--config FILE] [--set key=value]...`.
pub fn config(a: &ConfigArgs) -> Result<()> {
    let resolved = a.preset.is_some() || a.config.is_some() || !a.sets.is_empty();
    let defaults: HashMap<&str, String> = Config::default().entries().into_iter().collect();
    let values: Option<HashMap<&str, String>> = if resolved {
        // what `gptrain train` with the same flags would run
        let preset = a.preset.as_deref().or(if a.config.is_none() { Some(DEFAULT_PRESET) } else { None });
        let (cfg, notices) = config::resolve(preset, a.config.as_deref(), &a.sets)?;
        for n in notices.0 {
            eprintln!("{n}");
        }
        let mut from: Vec<String> = preset.map(|p| format!("--preset {p}")).into_iter().collect();
        from.extend(a.config.as_ref().map(|c| format!("--config {}", c.display())));
        from.extend(a.sets.iter().map(|s| format!("--set {s}")));
        let head = format!("The config of {}: each key's value (its default where that differs) and meaning.", from.join(" "));
        for l in wrap(&head, WIDTH) {
            say!("{l}");
        }
        Some(cfg.entries().into_iter().collect())
    } else {
        say!("Every config key: its default and meaning. Sources apply in this order: the defaults, a");
        say!("--preset NAME (`gptrain train` with neither --preset nor --config starts from `{DEFAULT_PRESET}`),");
        say!("a --config FILE (TOML `key = value` lines, or a nanoGPT config/*.py), then each --set key=value.");
        say!("`gptrain config --preset NAME [--config FILE] [--set key=value]...` shows the values they give.");
        None
    };
    let meaning: HashMap<&str, &str> = KNOBS.iter().copied().collect();
    let groups: Vec<(&str, Vec<Row>)> = GROUPS
        .iter()
        .map(|&(title, names)| {
            let rows = names
                .iter()
                .map(|&k| {
                    let default = &defaults[k];
                    let value = match &values {
                        _ if config::is_inert(k) => String::new(),
                        None => default.clone(),
                        Some(v) if v[k] == *default => default.clone(),
                        Some(v) => format!("{} (default {default})", v[k]),
                    };
                    (k.to_string(), value, meaning[k].to_string())
                })
                .collect();
            (title, rows)
        })
        .collect();
    // one set of columns for every group
    let w = widths(groups.iter().flat_map(|g| &g.1));
    for (title, rows) in &groups {
        say!("");
        say!("{title}");
        columns(rows, w);
    }
    say!("");
    say!("presets (--preset NAME)");
    let rows: Vec<Row> = PRESETS
        .iter()
        .map(|&(name, doc, parent, _)| {
            let from = parent.map_or(String::new(), |p| format!(" (starts from {p})"));
            (name.to_string(), String::new(), format!("{doc}{from}"))
        })
        .collect();
    columns(&rows, widths(rows.iter()));
    Ok(())
}
