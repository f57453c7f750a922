//! Re-renders `report.md` and `report.svg` from a `report.json` that `evaluate --report`
//! wrote, without evaluating again: `cargo run --release -p lmq-evals --example
//! render_report -- DIR`.

use anyhow::{Context, Result};
use lmq_evals::report::{self, ModelRow};

fn main() -> Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: render_report DIR")?,
    );
    let path = dir.join("report.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))?;
    let label = v["ppl"].as_str().unwrap_or_default().to_owned();
    let rows: Vec<ModelRow> = serde_json::from_value(v["models"].clone())
        .with_context(|| format!("{}: `models`", path.display()))?;
    std::fs::write(dir.join("report.md"), report::markdown(&rows, &label))?;
    std::fs::write(dir.join("report.svg"), report::svg::plot(&rows, &label))?;
    println!("{}", report::markdown(&rows, &label));
    Ok(())
}
