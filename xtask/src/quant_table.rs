//! `cargo xtask bench quant`: the RTN / GPTQ / AWQ / SmoothQuant table. For each scheme it writes a recipe,
//! runs the release `quantize` and `evaluate` binaries (the tools users run, not a library
//! shortcut) and prints one markdown row per method: wiki2 perplexity, quantize wall time,
//! peak RSS and size. Results are cached per run in `--out` (`--resume` reuses them), so a
//! long table survives an interruption.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{build_release_bins, workspace_root};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// One scheme of the table: label and the recipe's scheme fields.
struct Setting {
    label: &'static str,
    fields: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting {
        label: "w4g64",
        fields: "bits: 4, group_size: 64, symmetric: true",
    },
    Setting {
        label: "w4g64-asym",
        fields: "bits: 4, group_size: 64, symmetric: false",
    },
    Setting {
        label: "w3g64",
        fields: "bits: 3, group_size: 64, symmetric: true",
    },
    Setting {
        label: "w8",
        fields: "bits: 8, group_size: channel, symmetric: true",
    },
    Setting {
        label: "w2g64",
        fields: "bits: 2, group_size: 64, symmetric: true",
    },
    Setting {
        label: "w3g64-asym",
        fields: "bits: 3, group_size: 64, symmetric: false",
    },
    Setting {
        label: "w2g64-asym",
        fields: "bits: 2, group_size: 64, symmetric: false",
    },
    Setting {
        label: "w8-asym",
        fields: "bits: 8, group_size: channel, symmetric: false",
    },
    Setting {
        label: "w4g128",
        fields: "bits: 4, group_size: 128, symmetric: true",
    },
    Setting {
        label: "w8a8",
        fields: "scheme: W8A8",
    },
    Setting {
        label: "w8a8-azp",
        fields: "scheme: W8A8, input_activations: {symmetric: false}",
    },
];

/// Methods of the table: the passes in front of the quantizing one, and that one.
const METHODS: &[&str] = &[
    "rtn",
    "gptq",
    "awq",
    "awq-gptq",
    "smoothquant",
    "smoothquant-gptq",
];

/// Options of the table run.
pub struct QuantTableArgs {
    pub model: String,
    pub settings: Vec<String>,
    pub methods: Vec<String>,
    pub calibration: String,
    pub samples: usize,
    pub calib_seqlen: usize,
    pub gptq_extra: String,
    pub eval_seqlen: usize,
    pub eval_windows: Option<usize>,
    pub out: PathBuf,
    pub resume: bool,
}

/// The recipe for `method` at scheme `fields`: an optional smoothing pass (AWQ with its
/// defaults, SmoothQuant at α 0.8 as llm-compressor's W8A8 example) and RTN or GPTQ.
fn recipe_text(a: &QuantTableArgs, method: &str, fields: &str) -> Result<String> {
    if !METHODS.contains(&method) {
        bail!(
            "unknown method `{method}`: known methods are {}",
            METHODS.join(", ")
        );
    }
    let scope = "targets: [Linear], ignore: [lm_head]";
    let quantize = if !method.ends_with("gptq") {
        format!("      - rtn: {{{fields}, {scope}}}\n")
    } else {
        let extra = if a.gptq_extra.is_empty() {
            String::new()
        } else {
            format!(", {}", a.gptq_extra)
        };
        let order = if fields.contains("W8A8") {
            ""
        } else {
            "act_order: true, static_groups: true, "
        };
        format!("      - gptq: {{{fields}, {order}{scope}{extra}}}\n")
    };
    let smooth = match method.split('-').next() {
        Some("awq") => format!("      - awq: {{{scope}}}\n"),
        Some("smoothquant") => format!("      - smoothquant: {{alpha: 0.8, {scope}}}\n"),
        _ => String::new(),
    };
    let calibration = if method == "rtn" {
        String::new()
    } else {
        format!(
            "calibration: {{source: \"{}\", num_samples: {}, seqlen: {}, seed: 0}}\n",
            a.calibration, a.samples, a.calib_seqlen
        )
    };
    Ok(format!(
        "{calibration}stages:\n  - passes:\n{smooth}{quantize}"
    ))
}

fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let mut text = out.stdout.clone();
    text.extend_from_slice(&out.stderr);
    std::fs::write(log, &text)?;
    if !out.status.success() {
        bail!("{cmd:?} failed; see {}", log.display());
    }
    Ok(())
}

fn evaluate(a: &QuantTableArgs, model: &str, tag: &str) -> Result<Value> {
    let path = a.out.join(format!("{tag}.ppl.json"));
    if a.resume && path.exists() {
        return Ok(serde_json::from_str(&std::fs::read_to_string(&path)?)?);
    }
    let mut cmd = Command::new(workspace_root().join("target/release/evaluate"));
    cmd.args(["--model", model, "--ppl", "wiki2", "--json", "--seqlen"])
        .arg(a.eval_seqlen.to_string());
    if let Some(n) = a.eval_windows {
        cmd.args(["--max-windows", &n.to_string()]);
    }
    let out = cmd.output().context("running evaluate")?;
    if !out.status.success() {
        bail!("evaluate {model}: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(&path, &out.stdout)?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The perplexity in `evaluate --json` output (top level, or under `ppl` when the report
/// also carries zero-shot tasks).
fn ppl_of(r: &Value) -> f64 {
    match &r["ppl"] {
        Value::Object(o) => o.get("ppl").and_then(Value::as_f64),
        v => v.as_f64(),
    }
    .unwrap_or(f64::NAN)
}

/// Runs the table and prints it.
pub fn run(mut a: QuantTableArgs) -> Result<()> {
    a.out = std::env::current_dir()?.join(&a.out);
    std::fs::create_dir_all(&a.out)?;
    build_release_bins([("lmq-quant", "quantize"), ("lmq-evals", "evaluate")])?;
    let windows = a.eval_windows.map_or("all".to_string(), |n| n.to_string());
    let mut rows = vec![];
    let fp = evaluate(&a, &a.model, "fp")?;
    println!(
        "| setting | method | wiki2 ppl ({} × {}) | quantize s | peak RSS MiB | size MB |",
        windows, a.eval_seqlen
    );
    println!("|---|---|---|---|---|---|");
    println!("| f32 | — | {:.4} | | | |", ppl_of(&fp));
    rows.push(json!({"setting": "f32", "ppl": ppl_of(&fp)}));
    for s in SETTINGS
        .iter()
        .filter(|s| a.settings.iter().any(|x| x == s.label || x == "all"))
    {
        for method in &a.methods {
            let tag = format!("{}-{method}", s.label);
            let dir = a.out.join(&tag);
            let meta_path = a.out.join(format!("{tag}.quant.json"));
            let meta: Value = if a.resume && meta_path.exists() && dir.exists() {
                serde_json::from_str(&std::fs::read_to_string(&meta_path)?)?
            } else {
                let recipe = a.out.join(format!("{tag}.yaml"));
                std::fs::write(&recipe, recipe_text(&a, method, s.fields)?)?;
                let log = a.out.join(format!("{tag}.quantize.log"));
                let t0 = Instant::now();
                let done = run_logged(
                    Command::new(workspace_root().join("target/release/quantize"))
                        .current_dir(workspace_root())
                        .args(["--model", &a.model, "--force", "--recipe"])
                        .arg(&recipe)
                        .arg("--out")
                        .arg(&dir),
                    &log,
                );
                if let Err(e) = done {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let why = text.lines().find(|l| l.starts_with("error")).unwrap_or("");
                    println!("| {} | {method} | failed: {why} | | | |", s.label);
                    eprintln!("{e:#}");
                    continue;
                }
                let secs = t0.elapsed().as_secs_f64();
                let text = std::fs::read_to_string(&log)?;
                let rss = text
                    .split("peak RSS ")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok());
                let size = std::fs::metadata(dir.join("model.safetensors"))?.len();
                let m = json!({"seconds": secs, "peak_rss_mib": rss, "bytes": size});
                std::fs::write(&meta_path, serde_json::to_string_pretty(&m)?)?;
                m
            };
            let r = evaluate(&a, dir.to_str().context("non-UTF-8 path")?, &tag)?;
            let ppl = ppl_of(&r);
            println!(
                "| {} | {method} | {ppl:.4} | {:.1} | {:.0} | {:.1} |",
                s.label,
                meta["seconds"].as_f64().unwrap_or(f64::NAN),
                meta["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                meta["bytes"].as_f64().unwrap_or(f64::NAN) / 1e6
            );
            rows.push(json!({"setting": s.label, "method": method, "ppl": ppl, "quantize": meta}));
        }
    }
    let summary = json!({
        "model": a.model, "calibration": a.calibration, "samples": a.samples,
        "calib_seqlen": a.calib_seqlen, "eval_seqlen": a.eval_seqlen, "eval_windows": windows,
        "rows": rows,
    });
    std::fs::write(
        a.out.join("table.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(())
}
