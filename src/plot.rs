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
    /// The meter's steady tokens/s (median of recent iterations), after warm-up.
    pub steady_tok_s: Vec<(f64, f64)>,
    /// Iterations logged as warm-up.
    pub warmup: Vec<f64>,
}

/// Reads gptrain's metrics.jsonl.
pub fn read(text: &str) -> Result<Series> {
    let mut s = Series::default();
    let mut tokens_per_iter = None;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        match v["type"].as_str() {
            Some("start") => tokens_per_iter = v["tokens_per_iter"].as_f64(),
            Some("iter") => {
                let (Some(it), Some(loss)) = (v["iter"].as_f64(), v["loss"].as_f64()) else { continue };
                s.train.push((it, loss));
                if let (Some(t), Some(ms)) = (tokens_per_iter, v["ms"].as_f64()) {
                    s.tok_s.push((it, t / (ms / 1e3)));
                }
                if let Some(t) = v["tokens_per_sec"].as_f64() {
                    s.steady_tok_s.push((it, t));
                }
                if v["warmup"].as_bool() == Some(true) {
                    s.warmup.push(it);
                }
            }
            Some("eval") => {
                if let (Some(it), Some(t), Some(vl)) = (v["iter"].as_f64(), v["train_loss"].as_f64(), v["val_loss"].as_f64()) {
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

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, s: &Series) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let (x0, x1) = range(s.train.iter().chain(&s.eval_val).map(|p| p.0));
    // the shading covers the warm-up iterations up to halfway to the first steady one, and is
    // never narrower than 0.6% of the axis, so that a short warm-up in a long run stays visible
    let warm_end = s.warmup.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let warm_end = (warm_end + 0.5).max(x0 + (x1 - x0) * 0.006).min(x1);
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
    if !s.warmup.is_empty() {
        c.draw_series([Rectangle::new([(x0, l0), (warm_end, l1)], WARM.filled())])
            .map_err(e)?
            .label("warm-up")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], WARM.filled()));
        c.draw_series([PathElement::new([(warm_end, l0), (warm_end, l1)], WARM_EDGE.stroke_width(2))]).map_err(e)?;
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

    let (_, t1) = range(s.tok_s.iter().chain(&s.steady_tok_s).map(|p| p.1));
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
    if !s.warmup.is_empty() {
        c.draw_series([Rectangle::new([(x0, 0.0), (warm_end, t1 * 1.05)], WARM.filled())])
            .map_err(e)?
            .label("warm-up (excluded)")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], WARM.filled()));
        c.draw_series([PathElement::new([(warm_end, 0.0), (warm_end, t1 * 1.05)], WARM_EDGE.stroke_width(2))]).map_err(e)?;
    }
    c.draw_series(LineSeries::new(s.tok_s.iter().cloned(), BLUE.mix(0.4)))
        .map_err(e)?
        .label("each iteration")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE.mix(0.4)));
    c.draw_series(LineSeries::new(s.steady_tok_s.iter().cloned(), BLACK.stroke_width(2)))
        .map_err(e)?
        .label("steady (median)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK));
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
