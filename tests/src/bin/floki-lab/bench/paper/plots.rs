//! The paper benchmark's figures, in SVG and PNG (docs/benchmarks/): time
//! against data size per system, Floki's speedup against data size, and the
//! bytes each system wrote to disk. Log axes throughout.

use std::path::PathBuf;

use anyhow::Context as _;
use plotters::{coord::Shift, prelude::*, style::FontStyle};

use super::{
    System, human,
    results::{Row, Summary},
    scenario::{Pattern, Placement},
};

/// Where the figures go.
fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks")
}

/// The font for labels: DejaVu Sans (Debian's fonts-dejavu-core, which
/// `cargo xtask bench paper` installs).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn register_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))
}

fn color(system: System) -> RGBColor {
    match system {
        System::Floki => RGBColor(0x1b, 0x9e, 0x77),
        System::FlokiMemory => RGBColor(0x66, 0xa6, 0x1e),
        System::FlokiDisk => RGBColor(0xa6, 0x76, 0x1d),
        System::S3 => RGBColor(0xd9, 0x5f, 0x02),
        System::Redis => RGBColor(0x75, 0x70, 0xb3),
        System::BareTcp => RGBColor(0x66, 0x66, 0x66),
    }
}

fn pattern_color(pattern: Pattern) -> RGBColor {
    match pattern {
        Pattern::OneToOne => RGBColor(0x1f, 0x77, 0xb4),
        Pattern::Broadcast => RGBColor(0xff, 0x7f, 0x0e),
        Pattern::Gather => RGBColor(0x2c, 0xa0, 0x2c),
        Pattern::Shuffle => RGBColor(0xd6, 0x27, 0x28),
    }
}

/// Draws every figure in both formats; returns their names.
pub fn draw(summary: &Summary) -> anyhow::Result<Vec<String>> {
    register_font()?;
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let names = ["paper-time", "paper-speedup", "paper-disk"];
    for name in names {
        let svg = dir.join(format!("{name}.svg"));
        let png = dir.join(format!("{name}.png"));
        let drawn = match name {
            "paper-time" => time(
                SVGBackend::new(&svg, (1400, 700)).into_drawing_area(),
                summary,
            )
            .and_then(|()| {
                time(
                    BitMapBackend::new(&png, (1400, 700)).into_drawing_area(),
                    summary,
                )
            }),
            "paper-speedup" => speedup(
                SVGBackend::new(&svg, (1100, 500)).into_drawing_area(),
                summary,
            )
            .and_then(|()| {
                speedup(
                    BitMapBackend::new(&png, (1100, 500)).into_drawing_area(),
                    summary,
                )
            }),
            _ => disk(
                SVGBackend::new(&svg, (1100, 500)).into_drawing_area(),
                summary,
            )
            .and_then(|()| {
                disk(
                    BitMapBackend::new(&png, (1100, 500)).into_drawing_area(),
                    summary,
                )
            }),
        };
        drawn.with_context(|| format!("drawing {name}"))?;
    }
    Ok(names.iter().map(|name| (*name).to_owned()).collect())
}

fn sizes(summary: &Summary) -> (f64, f64) {
    let sizes: Vec<f64> = summary
        .rows
        .iter()
        .map(|r| r.scenario.size as f64)
        .collect();
    let min = sizes.iter().copied().fold(f64::MAX, f64::min);
    let max = sizes.iter().copied().fold(0.0, f64::max);
    (min / 1.5, max * 1.5)
}

fn rows(summary: &Summary, pattern: Pattern, placement: Placement) -> Vec<&Row> {
    summary
        .rows
        .iter()
        .filter(|r| r.scenario.pattern == pattern && r.scenario.placement == placement)
        .collect()
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

fn time<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, summary: &Summary) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (x0, x1) = sizes(summary);
    let seconds: Vec<f64> = summary
        .rows
        .iter()
        .flat_map(|r| r.stats.values().map(|s| s.seconds.median))
        .filter(|s| *s > 0.0)
        .collect();
    let y0 = seconds.iter().copied().fold(f64::MAX, f64::min) / 2.0;
    let y1 = seconds.iter().copied().fold(0.0, f64::max) * 2.0;
    let panels = root.split_evenly((2, 4));
    for (i, panel) in panels.iter().enumerate() {
        let placement = Placement::ALL[i / 4];
        let pattern = Pattern::ALL[i % 4];
        let rows = rows(summary, pattern, placement);
        if rows.is_empty() {
            continue;
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{pattern}, {placement}"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("data set")
            .y_desc("seconds, end to end")
            .x_label_formatter(&|v| human(*v as u64))
            .draw()
            .map_err(err)?;
        for &system in &summary.systems {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| {
                    r.stats
                        .get(&system)
                        .map(|s| (r.scenario.size as f64, s.seconds.median))
                })
                .collect();
            let c = color(system);
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(system.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn speedup<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    summary: &Summary,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let others: Vec<System> = summary
        .systems
        .iter()
        .copied()
        .filter(|&s| !s.is_floki())
        .collect();
    let (x0, x1) = sizes(summary);
    let all: Vec<f64> = summary
        .rows
        .iter()
        .flat_map(|r| others.iter().filter_map(|&s| r.speedup(s)))
        .filter(|x| *x > 0.0)
        .collect();
    let y0 = all.iter().copied().fold(f64::MAX, f64::min).min(1.0) / 2.0;
    let y1 = all.iter().copied().fold(0.0, f64::max).max(10.0) * 2.0;
    let panels = root.split_evenly((1, others.len().max(1)));
    for (panel, &other) in panels.iter().zip(&others) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("Floki's speedup over {}", other.label()),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("data set")
            .y_desc("times faster end to end")
            .x_label_formatter(&|v| human(*v as u64))
            .draw()
            .map_err(err)?;
        for placement in Placement::ALL {
            for pattern in Pattern::ALL {
                let points: Vec<(f64, f64)> = rows(summary, pattern, placement)
                    .iter()
                    .filter_map(|r| r.speedup(other).map(|x| (r.scenario.size as f64, x)))
                    .collect();
                if points.is_empty() {
                    continue;
                }
                let c = pattern_color(pattern);
                let style = if placement == Placement::OneNode {
                    c.stroke_width(2)
                } else {
                    c.mix(0.5).stroke_width(2)
                };
                chart
                    .draw_series(LineSeries::new(points.clone(), style))
                    .map_err(err)?
                    .label(format!("{pattern}, {placement}"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
                chart
                    .draw_series(points.iter().map(|p| Circle::new(*p, 3, style.filled())))
                    .map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 11))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn disk<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, summary: &Summary) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (x0, x1) = sizes(summary);
    let most = summary
        .rows
        .iter()
        .flat_map(|r| r.stats.values().map(|s| s.disk_bytes))
        .max()
        .unwrap_or(1) as f64;
    let panels = root.split_evenly((1, 2));
    for (panel, placement) in panels.iter().zip(Placement::ALL) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("Bytes written to disk, one-to-one, {placement} (0 drawn at 1)"),
                ("sans-serif", 15),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d((x0..x1).log_scale(), (0.5..most * 4.0).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("data set")
            .y_desc("bytes written")
            .x_label_formatter(&|v| human(*v as u64))
            .y_label_formatter(&|v| human(*v as u64))
            .draw()
            .map_err(err)?;
        let rows = rows(summary, Pattern::OneToOne, placement);
        for &system in &summary.systems {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| {
                    r.stats
                        .get(&system)
                        .map(|s| (r.scenario.size as f64, (s.disk_bytes as f64).max(1.0)))
                })
                .collect();
            let c = color(system);
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(system.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}
