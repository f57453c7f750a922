//! The training loss curve as a small standalone SVG (no plotting dependency): total loss,
//! distillation cross-entropy and α·hidden-state term against the step.

use std::fmt::Write;

use super::distill::StepLog;

/// One plotted quantity of a logged step.
type Series = Box<dyn Fn(&StepLog) -> f64>;

/// SVG of the loss curves in `log` (empty log: an empty chart).
pub fn loss_svg(log: &[StepLog], alpha: f64, title: &str) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 60.0, 150.0, 40.0, 45.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    // (name, colour, value of a step)
    let series: [(&str, &str, Series); 3] = [
        ("loss", "steelblue", Box::new(|s: &StepLog| s.loss)),
        ("CE (KD)", "darkorange", Box::new(|s: &StepLog| s.ce)),
        (
            "α·MSE",
            "seagreen",
            Box::new(move |s: &StepLog| alpha * s.mse),
        ),
    ];
    let ymax = log
        .iter()
        .map(|s| s.loss.max(s.ce))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.05;
    let xmax = log.last().map_or(1, |s| s.step).max(1) as f64;
    let x = |step: f64| left + pw * step / xmax;
    let y = |v: f64| top + ph * (1.0 - v / ymax);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="14">{title}</text>"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="gray"/>"#
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<line x1="{left}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="lightgray"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"#,
            left + pw,
            left - 6.0,
            y(v) + 4.0,
            y0 = y(v)
        );
        let st = xmax * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{st:.0}</text>"#,
            x(st),
            top + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">step</text>"#,
        left + pw / 2.0,
        h - 6.0
    );
    for (k, (name, color, f)) in series.iter().enumerate() {
        let pts: Vec<String> = log
            .iter()
            .map(|e| format!("{:.1},{:.1}", x(e.step as f64), y(f(e))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = top + 16.0 + 18.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
            left + pw + 10.0,
            left + pw + 30.0,
            left + pw + 36.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
