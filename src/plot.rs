//! `gptrain plot`: train/val loss and tokens/s against iteration from a run's metrics.jsonl,
//! as PNG and SVG, with the warm-up iterations shaded.

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::path::Path;

/// The series a plot shows.
#[derive(Default, Debug)]
pub struct Series {
    pub train: Vec<(f64, f64)>,
    pub eval_train: Vec<(f64, f64)>,
    pub eval_val: Vec<(f64, f64)>,
    /// Instantaneous tokens/s of each logged iteration (tokens per iteration / its time).
    pub tok_s: Vec<(f64, f64)>,
    /// The meter's steady tokens/s (median of recent iterations), after warm-up: one line per
    /// session, since each process's meter starts afresh.
    pub steady_tok_s: Vec<Vec<(f64, f64)>>,
    /// The warm-up's stretches, first and last iteration: one per session (a resumed run's
    /// metrics.jsonl holds a `start` record per process, each followed by its own warm-up).
    pub warmup_bands: Vec<(f64, f64)>,
}

/// Reads gptrain's metrics.jsonl. The file is appended to by every run in the out_dir: a
/// session that starts at iteration N (its `start` record) replaces what earlier ones logged
/// from N on (an interrupted run's iterations after its last checkpoint were trained again),
/// as TensorBoard's reader does with the session start gptrain writes there.
pub fn read(text: &str) -> Result<Series> {
    let mut s = Series::default();
    let mut tokens_per_iter = None;
    // whether the last iteration record was warm-up (a band is open); a start record closes it
    let mut in_band = false;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        match v["type"].as_str() {
            Some("start") => {
                tokens_per_iter = v["tokens_per_iter"].as_f64();
                in_band = false;
                if let Some(n) = v["iter"].as_f64() {
                    s.from(n);
                }
                s.steady_tok_s.push(Vec::new());
            }
            Some("iter") => {
                let (Some(it), Some(loss)) = (v["iter"].as_f64(), v["loss"].as_f64()) else { continue };
                s.train.push((it, loss));
                if let (Some(t), Some(ms)) = (tokens_per_iter, v["ms"].as_f64()) {
                    s.tok_s.push((it, t / (ms / 1e3)));
                }
                if let Some(t) = v["tokens_per_sec"].as_f64() {
                    match s.steady_tok_s.last_mut() {
                        Some(line) => line.push((it, t)),
                        None => s.steady_tok_s.push(vec![(it, t)]),
                    }
                }
                let warm = v["warmup"].as_bool() == Some(true);
                if warm {
                    match s.warmup_bands.last_mut() {
                        Some(band) if in_band => band.1 = it,
                        _ => s.warmup_bands.push((it, it)),
                    }
                }
                in_band = warm;
            }
            Some("eval") => {
                if let (Some(it), Some(t), Some(vl)) = (v["iter"].as_f64(), v["train_loss"].as_f64(), v["val_loss"].as_f64()) {
                    // an eval at a resumed session's first iteration again: the same point
                    s.eval_train.retain(|p| p.0 != it);
                    s.eval_val.retain(|p| p.0 != it);
                    s.eval_train.push((it, t));
                    s.eval_val.push((it, vl));
                }
            }
            _ => {}
        }
    }
    if s.train.is_empty() {
        bail!("no iteration records (`\"type\":\"iter\"`) found: expected a gptrain metrics.jsonl");
    }
    Ok(s)
}

impl Series {
    /// Forgets what was logged from iteration `n` on (the evaluation at `n` stays: it was made
    /// before the checkpoint a session resumes from).
    fn from(&mut self, n: f64) {
        for points in [&mut self.train, &mut self.tok_s] {
            points.retain(|p| p.0 < n);
        }
        for line in &mut self.steady_tok_s {
            line.retain(|p| p.0 < n);
        }
        self.steady_tok_s.retain(|line| !line.is_empty());
        for points in [&mut self.eval_train, &mut self.eval_val] {
            points.retain(|p| p.0 <= n);
        }
        self.warmup_bands.retain(|b| b.0 < n);
        for band in &mut self.warmup_bands {
            band.1 = band.1.min(n - 1.0);
        }
    }
}

fn range(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = xs.clone().fold(f64::INFINITY, f64::min);
    let hi = xs.fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (lo.min(0.0), lo.max(0.0) + 1.0)
    }
}

/// The warm-up shading's colour, and its edge's.
const WARM: RGBColor = RGBColor(255, 214, 165);
const WARM_EDGE: RGBColor = RGBColor(230, 130, 30);

/// Tick labels of the iteration axis: whole iterations, at most 10 of them.
fn x_labels(x0: f64, x1: f64) -> usize {
    ((x1 - x0).round() as usize + 1).clamp(2, 10)
}

/// A tick label of a tokens/s axis: `40k`, `1.2M`.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{}M", (v / 1e6 * 10.0).round() / 10.0),
        a if a >= 1e3 => format!("{}k", (v / 1e3 * 10.0).round() / 10.0),
        _ => format!("{}", v.round()),
    }
}

/// A tick label of the loss axis, with as many decimals as the range needs.
fn loss_label(v: f64, span: f64) -> String {
    let decimals = if span >= 5.0 {
        0
    } else if span >= 0.5 {
        1
    } else if span >= 0.05 {
        2
    } else {
        3
    };
    format!("{v:.decimals$}")
}

/// The shaded stretches of the iteration axis `x0..x1`, one per warm-up band (first and last
/// warm-up iteration): from halfway before its first iteration (the axis' start for the run's
/// first) to halfway to the first steady one, never narrower than 0.6% of the axis, so that
/// a short warm-up in a long run stays visible.
pub fn shading(bands: &[(f64, f64)], x0: f64, x1: f64) -> Vec<(f64, f64)> {
    let min_width = (x1 - x0) * 0.006;
    bands
        .iter()
        .map(|&(first, last)| {
            let a = if first <= x0 { x0 } else { (first - 0.5).max(x0) };
            let b = (last + 0.5).max(a + min_width).min(x1);
            (a, b)
        })
        .collect()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, s: &Series) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let (x0, x1) = range(s.train.iter().chain(&s.eval_val).map(|p| p.0));
    let bands = shading(&s.warmup_bands, x0, x1);
    let e = |e: plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    let x_fmt = |x: &f64| format!("{x:.0}");

    let (l0, l1) = range(s.train.iter().chain(&s.eval_val).chain(&s.eval_train).map(|p| p.1));
    let mut c = ChartBuilder::on(&top)
        .caption("loss", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, l0..l1)
        .map_err(e)?;
    c.configure_mesh()
        .x_desc("iteration")
        .y_desc("loss")
        .x_labels(x_labels(x0, x1))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| loss_label(*v, l1 - l0))
        .draw()
        .map_err(e)?;
    for (i, &(a, b)) in bands.iter().enumerate() {
        let band = c.draw_series([Rectangle::new([(a, l0), (b, l1)], WARM.filled())]).map_err(e)?;
        if i == 0 {
            band.label("warm-up").legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], WARM.filled()));
        }
        c.draw_series([PathElement::new([(b, l0), (b, l1)], WARM_EDGE.stroke_width(2))]).map_err(e)?;
    }
    c.draw_series(LineSeries::new(s.train.iter().cloned(), BLUE.mix(0.6)))
        .map_err(e)?
        .label("train (logged batches)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE));
    c.draw_series(LineSeries::new(s.eval_train.iter().cloned(), GREEN.stroke_width(2)))
        .map_err(e)?
        .label("train (eval)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], GREEN));
    c.draw_series(LineSeries::new(s.eval_val.iter().cloned(), RED.stroke_width(2)))
        .map_err(e)?
        .label("val (eval)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
    c.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;

    let (_, t1) = range(s.tok_s.iter().chain(s.steady_tok_s.iter().flatten()).map(|p| p.1));
    let mut c = ChartBuilder::on(&bottom)
        .caption("throughput", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..t1 * 1.05)
        .map_err(e)?;
    c.configure_mesh()
        .x_desc("iteration")
        .y_desc("tokens/s")
        .x_labels(x_labels(x0, x1))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(e)?;
    for (i, &(a, b)) in bands.iter().enumerate() {
        let band = c.draw_series([Rectangle::new([(a, 0.0), (b, t1 * 1.05)], WARM.filled())]).map_err(e)?;
        if i == 0 {
            band.label("warm-up (excluded)").legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], WARM.filled()));
        }
        c.draw_series([PathElement::new([(b, 0.0), (b, t1 * 1.05)], WARM_EDGE.stroke_width(2))]).map_err(e)?;
    }
    c.draw_series(LineSeries::new(s.tok_s.iter().cloned(), BLUE.mix(0.4)))
        .map_err(e)?
        .label("each iteration")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE.mix(0.4)));
    // one line per session: a resumed run's line restarts after its own warm-up
    for (i, line) in s.steady_tok_s.iter().enumerate() {
        let drawn = c.draw_series(LineSeries::new(line.iter().cloned(), BLACK.stroke_width(2))).map_err(e)?;
        if i == 0 {
            drawn.label("steady (median)").legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK));
        }
    }
    c.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Writes `<out>.png` and `<out>.svg`.
pub fn plot(metrics: &Path, out: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let text = std::fs::read_to_string(metrics).with_context(|| format!("cannot read {}", metrics.display()))?;
    let s = read(&text).with_context(|| format!("{}", metrics.display()))?;
    let png = out.with_extension("png");
    let svg = out.with_extension("svg");
    draw(BitMapBackend::new(&png, (1000, 800)).into_drawing_area(), &s).with_context(|| format!("cannot draw {}", png.display()))?;
    draw(SVGBackend::new(&svg, (1000, 800)).into_drawing_area(), &s).with_context(|| format!("cannot draw {}", svg.display()))?;
    Ok((png, svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iter(i: u64, warm: bool) -> String {
        format!("{{\"type\":\"iter\",\"iter\":{i},\"loss\":4.0,\"ms\":50.0,\"warmup\":{warm},\"tokens_per_sec\":null}}\n")
    }

    #[test]
    fn a_resumed_run_has_one_warm_up_band_per_session() {
        // the new user's run: stopped after iteration 1250, resumed at 1251, warm-up 0-4 and 1251-1253
        let mut t = String::from("{\"type\":\"start\",\"iter\":0,\"tokens_per_iter\":768}\n");
        for i in 0..1251 {
            t += &iter(i, i < 5);
        }
        t += "{\"type\":\"start\",\"iter\":1251,\"tokens_per_iter\":768}\n";
        for i in 1251..2000 {
            t += &iter(i, i < 1254);
        }
        let s = read(&t).unwrap();
        let warm_iters: f64 = s.warmup_bands.iter().map(|(first, last)| last - first + 1.0).sum();
        assert_eq!(warm_iters, 8.0);
        assert_eq!(s.warmup_bands, vec![(0.0, 4.0), (1251.0, 1253.0)]);
        // shaded: from the axis' start to halfway past 4, and around 1251-1253 (each at least
        // 0.6% of the axis wide), not 0-1253
        let sh = shading(&s.warmup_bands, 0.0, 1999.0);
        assert_eq!(sh.len(), 2);
        assert_eq!(sh[0].0, 0.0);
        assert!((sh[0].1 - 1999.0 * 0.006).abs() < 1e-9, "{sh:?}");
        assert_eq!(sh[1].0, 1250.5);
        assert!((sh[1].1 - (1250.5 + 1999.0 * 0.006)).abs() < 1e-9, "{sh:?}");
    }

    fn steady(i: u64, tok_s: f64) -> String {
        format!("{{\"type\":\"iter\",\"iter\":{i},\"loss\":4.0,\"ms\":50.0,\"warmup\":false,\"tokens_per_sec\":{tok_s}}}\n")
    }

    #[test]
    fn a_resumed_session_replaces_what_the_interrupted_one_logged_after_its_checkpoint() {
        // session 1: iterations 0-14, warm-up 0-2, checkpoint at 10 (evaluated there), killed
        // after 14; session 2 resumes at 10: warm-up 10-11, then steady again
        let mut t = String::from("{\"type\":\"start\",\"iter\":0,\"tokens_per_iter\":100}\n");
        for i in 0..15 {
            t += &if i < 3 { iter(i, true) } else { steady(i, 1000.0) };
            if i == 10 {
                t += "{\"type\":\"eval\",\"iter\":10,\"train_loss\":3.5,\"val_loss\":3.6}\n";
            }
        }
        t += "{\"type\":\"start\",\"iter\":10,\"tokens_per_iter\":100}\n";
        for i in 10..20 {
            t += &if i < 12 { iter(i, true) } else { steady(i, 2000.0) };
        }
        let s = read(&t).unwrap();
        // each iteration once, in order
        let xs: Vec<f64> = s.train.iter().map(|p| p.0).collect();
        assert_eq!(xs, (0..20).map(f64::from).collect::<Vec<_>>());
        assert_eq!(s.tok_s.len(), 20);
        // two steady lines, the first ending before the resume, the second after its warm-up
        let ends: Vec<_> = s.steady_tok_s.iter().map(|l| (l[0].0, l[l.len() - 1].0)).collect();
        assert_eq!(ends, vec![(3.0, 9.0), (12.0, 19.0)]);
        assert_eq!((s.eval_val.clone(), s.warmup_bands.clone()), (vec![(10.0, 3.6)], vec![(0.0, 2.0), (10.0, 11.0)]));
        // a session that resumes inside the first one's warm-up cuts that band short
        let mut t = String::from("{\"type\":\"start\",\"iter\":0}\n") + &iter(0, true) + &iter(1, true) + &iter(2, true);
        t += &("{\"type\":\"start\",\"iter\":1}\n".to_string() + &iter(1, true) + &steady(2, 5.0));
        let s = read(&t).unwrap();
        assert_eq!((s.warmup_bands.clone(), s.steady_tok_s.len()), (vec![(0.0, 0.0), (1.0, 1.0)], 1));
    }

    #[test]
    fn a_start_record_splits_warm_up_that_runs_on() {
        // a session stopped during its warm-up, resumed straight into another
        let mut t = String::from("{\"type\":\"start\",\"iter\":0}\n");
        t += &iter(0, true);
        t += &iter(1, true);
        t += "{\"type\":\"start\",\"iter\":2}\n";
        t += &iter(2, true);
        t += &iter(3, true);
        t += &iter(4, false);
        let s = read(&t).unwrap();
        assert_eq!(s.warmup_bands, vec![(0.0, 1.0), (2.0, 3.0)]);
        // one session: one band, drawn as before (axis start to halfway to the first steady one)
        let s = read(&(String::from("{\"type\":\"start\",\"iter\":0}\n") + &iter(0, true) + &iter(1, true) + &iter(2, false))).unwrap();
        assert_eq!(s.warmup_bands, vec![(0.0, 1.0)]);
        assert_eq!(shading(&s.warmup_bands, 0.0, 2.0), vec![(0.0, 1.5)]);
    }
}
