//! The report's plot: perplexity (log scale, lower is better) and average accuracy against
//! size on disk, one labelled point per model, as a self-contained SVG (no plotting crate,
//! nothing to install to view it).

use super::ModelRow;

const W: f64 = 900.0;
const H: f64 = 380.0;
const PANEL_W: f64 = 400.0;
const MARGIN: f64 = 60.0;
const TOP: f64 = 40.0;
const PLOT_H: f64 = 270.0;
/// Horizontal room kept right of the last point for its label.
const LABEL_ROOM: f64 = 110.0;

/// Linear map of `v` in `[lo, hi]` onto `[a, b]` (the middle when the range is empty).
fn map(v: f64, lo: f64, hi: f64, a: f64, b: f64) -> f64 {
    if hi > lo {
        a + (v - lo) / (hi - lo) * (b - a)
    } else {
        (a + b) / 2.0
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Padded `[lo, hi]` of the values.
fn range(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if !lo.is_finite() {
        return None;
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.02).max(1e-9);
    Some((lo - pad, hi + pad))
}

/// One panel: axes, ticks at the ends, a labelled point per model that has the figure.
fn panel(
    out: &mut String,
    x0: f64,
    title: &str,
    rows: &[ModelRow],
    y_of: &dyn Fn(&ModelRow) -> Option<f64>,
    log_y: bool,
) {
    let pts: Vec<(&ModelRow, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            y_of(r).map(|y| (r, r.size_bytes as f64 / 1e6, if log_y { y.ln() } else { y }))
        })
        .collect();
    let (xa, xb, ya, yb) = (x0 + MARGIN, x0 + PANEL_W, TOP + PLOT_H, TOP);
    out.push_str(&format!(
        "<text x=\"{:.1}\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        (xa + xb) / 2.0,
        escape(title)
    ));
    out.push_str(&format!(
        "<path d=\"M{xa:.1} {yb:.1} V{ya:.1} H{xb:.1}\" stroke=\"#333\" fill=\"none\"/>\n"
    ));
    out.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">size on disk (MB)</text>\n",
        (xa + xb) / 2.0,
        ya + 36.0
    ));
    let (Some((xl, xh)), Some((yl, yh))) = (
        range(pts.iter().map(|p| p.1)),
        range(pts.iter().map(|p| p.2)),
    ) else {
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">no data</text>\n",
            (xa + xb) / 2.0,
            (ya + yb) / 2.0
        ));
        return;
    };
    let ylab = |v: f64| {
        if log_y {
            format!("{:.1}", v.exp())
        } else {
            format!("{v:.3}")
        }
    };
    for (v, y) in [(yl, ya), (yh, yb)] {
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n",
            xa - 4.0,
            y + 4.0,
            ylab(v)
        ));
    }
    for (v, x) in [(xl, xa + 10.0), (xh, xb - LABEL_ROOM)] {
        out.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{v:.0}</text>\n",
            ya + 16.0
        ));
    }
    for (r, x, y) in &pts {
        // Points stay clear of the right edge, where their labels go.
        let (px, py) = (
            map(*x, xl, xh, xa + 10.0, xb - LABEL_ROOM),
            map(*y, yl, yh, ya, yb),
        );
        out.push_str(&format!(
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"5\" fill=\"#2a6fdb\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>\n",
            px + 7.0,
            py - 6.0,
            escape(&r.name)
        ));
    }
}

/// The two-panel plot.
pub fn plot(rows: &[ModelRow], ppl_label: &str) -> String {
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    panel(
        &mut out,
        0.0,
        &format!("perplexity, {ppl_label} (log scale)"),
        rows,
        &|r| r.ppl,
        true,
    );
    panel(
        &mut out,
        W / 2.0,
        "average zero-shot accuracy",
        rows,
        &|r| r.average(),
        false,
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::TaskFigure;

    fn row(name: &str, size: u64, ppl: f64, acc: Option<f64>) -> ModelRow {
        ModelRow {
            name: name.into(),
            path: name.into(),
            size_bytes: size,
            params: 1,
            ppl: Some(ppl),
            tasks: acc
                .map(|v| TaskFigure {
                    task: "piqa".into(),
                    metric: "acc".into(),
                    value: v,
                    stderr: None,
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn one_point_per_model_and_figure_smaller_models_to_the_left() {
        let rows = [
            row("f32", 540_000_000, 28.7, Some(0.6)),
            row("w4 <g64>", 173_000_000, 37.7, Some(0.55)),
        ];
        let svg = plot(&rows, "wiki2");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("w4 &lt;g64&gt;"), "labels are escaped");
        let cx: Vec<f64> = svg
            .split("<circle cx=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().parse().unwrap())
            .collect();
        assert!(cx[1] < cx[0], "the smaller model sits left: {cx:?}");
        // Without tasks the accuracy panel says so instead of plotting nothing silently.
        let svg = plot(&[row("a", 1, 2.0, None)], "wiki2");
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("no data"));
    }
}
