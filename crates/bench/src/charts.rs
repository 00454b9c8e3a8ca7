//! PNG charts with plotters (bitmap backend, font from the system's DejaVu Sans).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// Register a TrueType font for plotters; `false` when none is found (charts are skipped).
pub fn init_font() -> bool {
    let candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    for c in candidates {
        if let Ok(bytes) = std::fs::read(c) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

const COLORS: [RGBColor; 5] = [
    RGBColor(120, 120, 120),
    RGBColor(62, 207, 142),
    RGBColor(37, 99, 235),
    RGBColor(234, 88, 12),
    RGBColor(147, 51, 234),
];

type Err = Box<dyn std::error::Error>;

/// Grouped vertical bars: one group per category, one bar per series.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<(), Err> {
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let maxv = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let n = categories.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..n, 0f64..maxv)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(y_label)
        .y_label_formatter(&|v| human(*v))
        .label_style(("sans-serif", 14))
        .draw()?;
    let k = series.len().max(1) as f64;
    let w = 0.8 / k;
    for (si, (name, vals)) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        chart
            .draw_series(vals.iter().enumerate().map(|(ci, v)| {
                let x0 = ci as f64 + 0.1 + si as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.92, *v)], color.filled())
            }))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        for (ci, v) in vals.iter().enumerate() {
            let x0 = ci as f64 + 0.1 + si as f64 * w + w * 0.46;
            let (px, py) = chart.backend_coord(&(x0, *v));
            root.draw(&Text::new(
                human(*v),
                (px - 14, py - 16),
                ("sans-serif", 12).into_font().color(&BLACK),
            ))?;
        }
    }
    for (ci, c) in categories.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(ci as f64 + 0.5, 0.0));
        let half = (c.len() as i32 * 7) / 2;
        root.draw(&Text::new(
            c.clone(),
            (px - half, py + 10),
            ("sans-serif", 15).into_font().color(&BLACK),
        ))?;
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Cumulative distributions of latency samples (milliseconds), x cut at the largest p99.5.
pub fn cdf(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> Result<(), Err> {
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut sorted: Vec<(String, Vec<f64>)> = series
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| {
            let mut v = v.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            (n.clone(), v)
        })
        .collect();
    if sorted.is_empty() {
        return Ok(());
    }
    let xmax = sorted
        .iter()
        .map(|(_, v)| v[((v.len() as f64 * 0.995) as usize).min(v.len() - 1)])
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("fraction")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (si, (name, v)) in sorted.iter_mut().enumerate() {
        let color = COLORS[(si + 1) % COLORS.len()];
        let n = v.len() as f64;
        chart
            .draw_series(LineSeries::new(
                v.iter()
                    .enumerate()
                    .map(|(i, x)| (x.min(xmax), (i + 1) as f64 / n)),
                color.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// 1234567 -> "1.23M".
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
