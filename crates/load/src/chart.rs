//! Line charts as standalone SVG files, so the docs can show them as images: latency against
//! concurrency, tokens per second against concurrency, the server's memory over time.

/// Okabe–Ito colours (the eval reports use the same), distinguishable with colour-vision
/// deficiencies.
const PALETTE: [&str; 6] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9"];

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart's words and scale.
#[derive(Debug, Clone)]
pub struct Axes {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Powers of two on x (concurrency 1, 2, 4 … 64) read better on a log scale.
    pub log2_x: bool,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Ticks for 0..max: a round step giving 4–8 lines.
fn nice_ticks(max: f64) -> Vec<f64> {
    // Not positive, or NaN.
    if max.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return vec![0.0, 1.0];
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| max / s <= 7.0)
        .unwrap_or(10.0 * magnitude);
    (0..).map(|i| i as f64 * step).take_while(|t| *t <= max + step * 0.999).collect()
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws `series` on shared axes starting at zero on y.
pub fn line_chart(axes: &Axes, series: &[Series]) -> String {
    let (width, height) = (640.0, 360.0);
    let (left, right, top, bottom) = (64.0, 150.0, 36.0, 48.0);
    let (plot_w, plot_h) = (width - left - right, height - top - bottom);
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite())
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .collect();
    let tx = |x: f64| if axes.log2_x { x.max(1e-9).log2() } else { x };
    let (x_min, x_max) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(tx(*x)), hi.max(tx(*x))));
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max)
    } else {
        (x_min.min(0.0), x_min.max(0.0) + 1.0)
    };
    let y_ticks = nice_ticks(ys.iter().copied().fold(0.0, f64::max));
    let y_max = *y_ticks.last().expect("at least two ticks");
    let px = |x: f64| left + (tx(x) - x_min) / (x_max - x_min) * plot_w;
    let py = |y: f64| top + plot_h - y / y_max * plot_h;

    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{left}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        escape(&axes.title),
        escape(&axes.title)
    );
    for t in &y_ticks {
        let y = py(*t);
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e4e6ef\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            left - 6.0,
            y + 4.0,
            label(*t)
        ));
    }
    // x ticks at the observed x values (the sweep's levels), not at arbitrary round numbers.
    let mut x_ticks: Vec<f64> = xs.clone();
    x_ticks.sort_by(f64::total_cmp);
    x_ticks.dedup();
    if x_ticks.len() > 12 {
        let step = x_ticks.len().div_ceil(8);
        x_ticks = x_ticks.into_iter().step_by(step).collect();
    }
    for x in &x_ticks {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            px(*x),
            top + plot_h + 16.0,
            label(*x)
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#555\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        top + plot_h,
        left + plot_w,
        top + plot_h,
        left + plot_w / 2.0,
        height - 10.0,
        escape(&axes.x_label),
        top + plot_h / 2.0,
        escape(&axes.y_label)
    ));
    for (i, line) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points: Vec<String> = line
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        ));
        if line.points.len() <= 16 {
            for (x, y) in line.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
                s.push_str(&format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{}: {} → {}</title></circle>", px(*x), py(*y), escape(&line.name), label(*x), label(*y)));
            }
        }
        let ly = top + 8.0 + i as f64 * 18.0;
        s.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left + plot_w + 12.0,
            ly - 4.0,
            left + plot_w + 28.0,
            ly,
            escape(&line.name)
        ));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_every_series_and_escapes_names() {
        let axes = Axes {
            title: "latency <p95>".into(),
            x_label: "people".into(),
            y_label: "s".into(),
            log2_x: true,
        };
        let svg = line_chart(
            &axes,
            &[
                Series { name: "p50".into(), points: vec![(1.0, 0.5), (4.0, 1.5), (64.0, 9.0)] },
                Series { name: "a&b".into(), points: vec![(1.0, 1.0)] },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("latency &lt;p95&gt;") && svg.contains("a&amp;b"));
        assert!(svg.contains(">64<"), "x ticks at the levels");
        // Empty input still gives a valid picture.
        assert!(line_chart(&axes, &[]).ends_with("</svg>\n"));
    }

    #[test]
    fn ticks_cover_the_maximum_with_round_steps() {
        let ticks = nice_ticks(93.0);
        assert!(*ticks.last().unwrap() >= 93.0 && ticks.len() <= 9, "{ticks:?}");
        assert_eq!(ticks[1] - ticks[0], 20.0);
    }
}
