//! Inline SVG charts for the HTML reports: no script, no external file, readable offline and
//! in a mail attachment. Three kinds: grouped bars with intervals (per-persona comparison),
//! small histograms (distributions), and a forest plot (A/B deltas with intervals).

use crate::html::escape;

/// Colours that stay distinguishable for the common colour-vision deficiencies (Okabe–Ito).
const PALETTE: [&str; 8] =
    ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];

/// One bar: a value in 0..=1 with an optional interval.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Which series (persona) it belongs to.
    pub series: String,
    /// The value, 0..=1; `None` draws nothing.
    pub value: Option<f64>,
    /// Interval's low end.
    pub low: Option<f64>,
    /// Interval's high end.
    pub high: Option<f64>,
}

/// Bars that share a label (one criterion).
#[derive(Debug, Clone)]
pub struct Group {
    /// The label.
    pub label: String,
    /// One bar per series.
    pub bars: Vec<Bar>,
}

fn clamp01(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Horizontal grouped bars, 0..1, one group per criterion, one colour per series, with a legend.
pub fn grouped_bars(groups: &[Group], series: &[String]) -> String {
    let (label_w, plot_w, bar_h, gap) = (190.0, 460.0, 12.0, 10.0);
    let per_group = bar_h * series.len().max(1) as f64 + gap;
    let legend_h = 22.0;
    let height = legend_h + per_group * groups.len() as f64 + 24.0;
    let width = label_w + plot_w + 30.0;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"mean score per persona and criterion\">");
    for (i, name) in series.iter().enumerate() {
        let x = label_w + i as f64 * 120.0;
        s.push_str(&format!("<rect x=\"{x}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"13\">{}</text>", PALETTE[i % PALETTE.len()], x + 14.0, escape(name)));
    }
    for t in 0..=4 {
        let x = label_w + plot_w * t as f64 / 4.0;
        s.push_str(&format!("<line x1=\"{x}\" y1=\"{legend_h}\" x2=\"{x}\" y2=\"{}\" stroke=\"#e4e6ef\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>", height - 16.0, height - 4.0, t as f64 / 4.0));
    }
    for (g, group) in groups.iter().enumerate() {
        let top = legend_h + g as f64 * per_group;
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            label_w - 6.0,
            top + per_group / 2.0,
            escape(&group.label)
        ));
        for (i, bar) in group.bars.iter().enumerate() {
            let Some(v) = bar.value else { continue };
            let colour =
                PALETTE[series.iter().position(|x| *x == bar.series).unwrap_or(i) % PALETTE.len()];
            let y = top + i as f64 * bar_h;
            s.push_str(&format!("<rect x=\"{label_w}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{colour}\"><title>{}: {v:.2}</title></rect>", plot_w * clamp01(v), bar_h - 2.0, escape(&bar.series)));
            if let (Some(lo), Some(hi)) = (bar.low, bar.high) {
                let mid = y + (bar_h - 2.0) / 2.0;
                s.push_str(&format!(
                    "<line x1=\"{:.1}\" y1=\"{mid}\" x2=\"{:.1}\" y2=\"{mid}\" stroke=\"#333\"/>",
                    label_w + plot_w * clamp01(lo),
                    label_w + plot_w * clamp01(hi)
                ));
            }
        }
    }
    s.push_str("</svg>");
    s
}

/// A small vertical histogram: (label, count) in order.
pub fn histogram(counts: &[(String, usize)]) -> String {
    let (w, h, pad) = (220.0, 110.0, 18.0);
    let max = counts.iter().map(|c| c.1).max().unwrap_or(1).max(1) as f64;
    let slot = (w - 2.0 * pad) / counts.len().max(1) as f64;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"distribution of scores\">");
    for (i, (label, n)) in counts.iter().enumerate() {
        let bh = (h - 2.0 * pad) * *n as f64 / max;
        let x = pad + i as f64 * slot;
        s.push_str(&format!("<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{}: {n}</title></rect>", x + 2.0, h - pad - bh, slot - 4.0, PALETTE[0], escape(label)));
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x + slot / 2.0,
            h - 4.0,
            escape(label)
        ));
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>",
            x + slot / 2.0,
            h - pad - bh - 3.0
        ));
    }
    s.push_str("</svg>");
    s
}

/// One row of a forest plot.
#[derive(Debug, Clone)]
pub struct ForestRow {
    /// The measure.
    pub label: String,
    /// The change, in units of the measure's scale share (−1..1).
    pub delta: f64,
    /// Interval.
    pub low: f64,
    /// Interval.
    pub high: f64,
    /// Drawn bold and coloured when significant.
    pub significant: bool,
}

/// A forest plot of B − A per measure, centred on zero.
pub fn forest(rows: &[ForestRow]) -> String {
    let (label_w, plot_w, row_h) = (200.0, 420.0, 22.0);
    let height = row_h * rows.len() as f64 + 30.0;
    let span = rows
        .iter()
        .flat_map(|r| [r.low.abs(), r.high.abs(), r.delta.abs()])
        .filter(|v| v.is_finite())
        .fold(0.05f64, f64::max)
        * 1.1;
    let x_of = |v: f64| label_w + plot_w / 2.0 + plot_w / 2.0 * (v / span).clamp(-1.0, 1.0);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"change from A to B per measure\">", label_w + plot_w + 20.0);
    s.push_str(&format!("<line x1=\"{0}\" y1=\"0\" x2=\"{0}\" y2=\"{1}\" stroke=\"#999\" stroke-dasharray=\"3 3\"/>", x_of(0.0), height - 20.0));
    s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">worse ← 0 → better (share of scale, ±{span:.2})</text>", x_of(0.0), height - 4.0));
    for (i, r) in rows.iter().enumerate() {
        let y = row_h * i as f64 + row_h / 2.0;
        let colour = if r.significant {
            if r.delta > 0.0 {
                "#009E73"
            } else {
                "#D55E00"
            }
        } else {
            "#777"
        };
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\"{}>{}</text>",
            label_w - 6.0,
            y + 4.0,
            if r.significant { " font-weight=\"bold\"" } else { "" },
            escape(&r.label)
        ));
        if ![r.delta, r.low, r.high].iter().all(|v| v.is_finite()) {
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">n/a</text>",
                x_of(0.0),
                y + 4.0
            ));
            continue;
        }
        s.push_str(&format!("<line x1=\"{:.1}\" y1=\"{y}\" x2=\"{:.1}\" y2=\"{y}\" stroke=\"{colour}\" stroke-width=\"2\"/>", x_of(r.low), x_of(r.high)));
        s.push_str(&format!("<circle cx=\"{:.1}\" cy=\"{y}\" r=\"4\" fill=\"{colour}\"><title>{}: {:+.3} [{:+.3}, {:+.3}]</title></circle>", x_of(r.delta), escape(&r.label), r.delta, r.low, r.high));
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_and_escape_labels() {
        let g = vec![Group {
            label: "A<b>".into(),
            bars: vec![
                Bar { series: "p&q".into(), value: Some(0.5), low: Some(0.4), high: Some(0.7) },
                Bar { series: "r".into(), value: None, low: None, high: None },
            ],
        }];
        let s = grouped_bars(&g, &["p&q".into(), "r".into()]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("A&lt;b&gt;") && s.contains("p&amp;q") && !s.contains("A<b>"));
        assert_eq!(
            s.matches("<rect").count(),
            3,
            "two legend swatches and one bar (the missing value draws none)"
        );
        let h = histogram(&[("1".into(), 2), ("5".into(), 0)]);
        assert_eq!(h.matches("<rect").count(), 2);
        let f = forest(&[
            ForestRow { label: "x".into(), delta: 0.2, low: 0.1, high: 0.3, significant: true },
            ForestRow {
                label: "y".into(),
                delta: f64::NAN,
                low: f64::NAN,
                high: f64::NAN,
                significant: false,
            },
        ]);
        assert!(f.contains("#009E73") && !f.contains("NaN"));
    }
}
