//! One bar chart per metric: a bar per way at its median, a whisker from the least to the most
//! of its repeats. SVG drawn by `plotters` (its SVG backend needs no fonts and no browser: text
//! is left to whatever shows the SVG).

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Spread, number};

const SIZE: (u32, u32) = (720, 360);

/// Chart errors carry the backend's words.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart {path}: {message}")]
pub struct ChartError {
    path: String,
    message: String,
}

/// Draws `bars` (way, spread) into the SVG file `path`.
pub fn bar_chart(
    path: &Path,
    label: &str,
    bars: &[(String, Spread)],
    scripted: bool,
) -> Result<(), ChartError> {
    draw(path, label, bars, scripted).map_err(|error| ChartError {
        path: path.display().to_string(),
        message: error.to_string(),
    })
}

fn draw(
    path: &Path,
    label: &str,
    bars: &[(String, Spread)],
    scripted: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let top = bars
        .iter()
        .map(|(_, spread)| spread.max.max(spread.median))
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let caption = if scripted {
        format!("{label} — scripted stand-in")
    } else {
        label.to_string()
    };
    let names: Vec<String> = bars.iter().map(|(way, _)| way.clone()).collect();
    let count = bars.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5_f64..(count - 0.5), 0.0_f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|x| {
            let index = x.round();
            if (x - index).abs() > 0.01 || index < 0.0 {
                return String::new();
            }
            names.get(index as usize).cloned().unwrap_or_default()
        })
        .y_label_formatter(&|y| number(*y))
        .draw()?;
    let colour = if scripted {
        RGBColor(150, 150, 150)
    } else {
        RGBColor(70, 110, 170)
    };
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, spread))| {
        let x = i as f64;
        Rectangle::new([(x - 0.3, 0.0), (x + 0.3, spread.median)], colour.filled())
    }))?;
    // Whiskers: the least and most of the repeats, where they differ.
    chart.draw_series(
        bars.iter()
            .enumerate()
            .filter(|(_, (_, spread))| spread.runs > 1 && spread.max > spread.min)
            .map(|(i, (_, spread))| {
                let x = i as f64;
                PathElement::new(
                    vec![
                        (x - 0.08, spread.min),
                        (x + 0.08, spread.min),
                        (x, spread.min),
                        (x, spread.max),
                        (x - 0.08, spread.max),
                        (x + 0.08, spread.max),
                    ],
                    BLACK.stroke_width(2),
                )
            }),
    )?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, spread))| {
        Text::new(
            number(spread.median),
            (i as f64 - 0.1, spread.median + top * 0.02),
            ("sans-serif", 13),
        )
    }))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_names_every_way_and_marks_a_scripted_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cost_usd.svg");
        let bars = vec![
            ("single".to_string(), Spread::of(&[1.0, 2.0, 3.0])),
            ("team".to_string(), Spread::of(&[4.0])),
        ];
        bar_chart(&path, "cost (USD)", &bars, true).expect("chart");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.starts_with("<svg"), "{svg}");
        for word in ["single", "team", "cost (USD) — scripted stand-in"] {
            assert!(svg.contains(word), "{word} missing");
        }
    }
}
