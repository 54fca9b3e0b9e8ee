//! Percentile plots in the style of the HdrHistogram plotter: latency against percentile, the
//! x axis stretched as `1/(1-p)` on a log scale so 90 %, 99 %, 99.9 %... are evenly spaced.
//! Several runs share one chart. SVG or PNG, chosen by the file extension.
//!
//! Text needs a TrueType font. plotters is built with `ab_glyph` (no fontconfig): we load
//! DejaVu Sans from Debian's `fonts-dejavu-core` package, or the file named by
//! `XDPMESH_BENCH_FONT`.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::BenchError;
use crate::report::RunResult;

/// Where a sans-serif TTF usually is on Debian (fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];
pub const FONT_ENV: &str = "XDPMESH_BENCH_FONT";

const SIZE: (u32, u32) = (1100, 650);

/// Register a font with plotters once per process.
fn ensure_font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<String> = std::env::var(FONT_ENV)
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()))
            .collect();
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the life of the process: leak them once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{path} is not a usable TrueType font"));
            }
        }
        Err(format!(
            "no font found for the plot's text: install Debian's fonts-dejavu-core, \
             or set {FONT_ENV} to a .ttf file (looked at {})",
            candidates.join(", ")
        ))
    })
    .clone()
}

/// One run as plot points: (1/(1-p), latency in ns).
fn curve(run: &RunResult, x_max: f64) -> Result<Vec<(f64, f64)>, String> {
    let h = run.histogram.to_histogram()?;
    let mut pts: Vec<(f64, f64)> = Vec::new();
    if h.is_empty() {
        return Ok(pts);
    }
    pts.push((1.0, h.min() as f64));
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let x = if q >= 1.0 {
            x_max
        } else {
            (1.0 / (1.0 - q)).min(x_max)
        };
        pts.push((x, v.value_iterated_to() as f64));
    }
    pts.push((x_max, h.max() as f64));
    Ok(pts)
}

/// Label of the x position `1/(1-p)`: "0%", "90%", "99%", "99.9%"...
fn percentile_label(x: f64) -> String {
    if x <= 1.0 {
        return "0%".into();
    }
    let p = 100.0 * (1.0 - 1.0 / x);
    let decimals = (x.log10().round() as i32 - 2).max(0) as usize;
    format!("{p:.decimals$}%")
}

/// Draw `runs` on one chart into `path` (`.svg` or `.png`).
pub fn plot_runs(runs: &[RunResult], path: &Path, title: &str) -> Result<(), BenchError> {
    let fail = |reason: String| BenchError::Plot {
        path: path.display().to_string(),
        reason,
    };
    if runs.is_empty() {
        return Err(fail("no runs to plot".into()));
    }
    ensure_font().map_err(fail)?;
    // The last decade that the largest run resolves: 1/(1-p) up to its count (at least 99 %).
    let most = runs
        .iter()
        .map(|r| r.latency.count)
        .max()
        .unwrap_or(0)
        .max(100);
    let decades = ((most as f64).log10().ceil() as i32).clamp(2, 7);
    let x_max = 10f64.powi(decades);
    let mut curves = Vec::new();
    for r in runs {
        curves.push((r.name.clone(), curve(r, x_max).map_err(fail)?));
    }
    let y_max_ns = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let (unit, div) = if y_max_ns < 1e6 {
        ("µs", 1e3)
    } else if y_max_ns < 1e9 {
        ("ms", 1e6)
    } else {
        ("s", 1e9)
    };
    let chart = Chart {
        title,
        curves: &curves,
        x_max,
        decades,
        y_max: y_max_ns / div * 1.05,
        unit,
        div,
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("svg") => chart
            .draw(SVGBackend::new(path, SIZE).into_drawing_area())
            .map_err(fail),
        Some("png") => chart
            .draw(BitMapBackend::new(path, SIZE).into_drawing_area())
            .map_err(fail),
        _ => Err(fail("the file name must end in .svg or .png".into())),
    }
}

struct Chart<'a> {
    title: &'a str,
    curves: &'a [(String, Vec<(f64, f64)>)],
    x_max: f64,
    decades: i32,
    y_max: f64,
    unit: &'a str,
    div: f64,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

impl Chart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let key_points: Vec<f64> = (0..=self.decades).map(|d| 10f64.powi(d)).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 24))
            .margin(20)
            .margin_right(50)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (1f64..self.x_max).log_scale().with_key_points(key_points),
                0f64..self.y_max,
            )
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc(format!("latency ({})", self.unit))
            .x_label_formatter(&|x| percentile_label(*x))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()
            .map_err(e)?;
        for (i, (name, pts)) in self.curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let div = self.div;
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|&(x, y)| (x, y / div)),
                    color.stroke_width(2),
                ))
                .map_err(e)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10000.0), "99.99%");
    }
}
