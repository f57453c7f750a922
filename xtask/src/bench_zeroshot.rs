//! `cargo xtask bench zeroshot`: what prefix sharing and batching buy in the zero-shot
//! suite. Runs the release `evaluate` on the same questions three ways (each question's
//! context once and all its continuations in one pass; every request on its own, as
//! lm-eval does; every request on its own, right-padded batches), alternating per round so
//! the shared machine's drift hits all three alike, and prints seconds per task, the
//! speedups, and whether the accuracies agree (they must: the three score the same
//! log-likelihoods).

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{build_release_bins, workspace_root};

/// What `bench zeroshot` was asked for.
pub struct ZeroshotBenchArgs {
    pub model: String,
    pub tasks: String,
    pub limit: Option<usize>,
    pub threads: usize,
    pub batch_size: usize,
    pub rounds: usize,
}

/// One way of scoring: its label and the `evaluate` flags that select it.
struct Mode {
    label: String,
    flags: Vec<String>,
}

fn modes(batch_size: usize) -> Vec<Mode> {
    vec![
        Mode {
            label: "shared prefix".into(),
            flags: vec![],
        },
        Mode {
            label: "separate".into(),
            flags: vec!["--no-prefix-sharing".into()],
        },
        Mode {
            label: format!("separate, batch {batch_size}"),
            flags: vec![
                "--no-prefix-sharing".into(),
                "--batch-size".into(),
                batch_size.to_string(),
            ],
        },
    ]
}

/// One task's figures from one `evaluate --json` run.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRun {
    pub docs: u64,
    pub requests: u64,
    pub forward_tokens: u64,
    pub seconds: f64,
    /// (metric name, value) in the order `evaluate` reports them.
    pub metrics: Vec<(String, f64)>,
}

/// The per-task figures of an `evaluate --json` report, by task name.
pub fn parse_report(json: &Value) -> Result<BTreeMap<String, TaskRun>> {
    let tasks = json["tasks"]
        .as_array()
        .context("evaluate --json output has no `tasks` array")?;
    let mut out = BTreeMap::new();
    for t in tasks {
        let name = t["task"].as_str().context("task without a name")?;
        let num = |k: &str| {
            t[k].as_u64()
                .with_context(|| format!("{name}: `{k}` missing"))
        };
        let metrics = t["metrics"]
            .as_array()
            .with_context(|| format!("{name}: `metrics` missing"))?
            .iter()
            .map(|m| {
                Ok((
                    m["name"].as_str().context("metric name")?.to_string(),
                    m["value"].as_f64().context("metric value")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        out.insert(
            name.to_string(),
            TaskRun {
                docs: num("n")?,
                requests: num("requests")?,
                forward_tokens: num("forward_tokens")?,
                seconds: t["seconds"]
                    .as_f64()
                    .with_context(|| format!("{name}: `seconds` missing"))?,
                metrics,
            },
        );
    }
    Ok(out)
}

/// Largest difference between two runs' metrics of a task (accuracies; perplexities
/// relative), so a mode that scored differently shows up in the table.
pub fn metric_gap(a: &TaskRun, b: &TaskRun) -> f64 {
    a.metrics
        .iter()
        .zip(&b.metrics)
        .map(|((na, va), (_, vb))| {
            if na.contains("perplexity") {
                (va - vb).abs() / va.abs().max(f64::MIN_POSITIVE)
            } else {
                (va - vb).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// Builds `evaluate`, runs the rounds, prints the table.
pub fn run(args: ZeroshotBenchArgs) -> Result<()> {
    let root = workspace_root();
    let [evaluate] = build_release_bins([("lmq-evals", "evaluate")])?;
    let modes = modes(args.batch_size);
    // best[mode][task]: the fastest run of each task in each mode.
    let mut best: Vec<BTreeMap<String, TaskRun>> = vec![BTreeMap::new(); modes.len()];
    for round in 0..args.rounds {
        for (mode, best) in modes.iter().zip(best.iter_mut()) {
            let mut cmd = Command::new(&evaluate);
            cmd.current_dir(&root).args([
                "--model",
                &args.model,
                "--tasks",
                &args.tasks,
                "--threads",
                &args.threads.to_string(),
                "--json",
                "--no-progress",
            ]);
            if let Some(l) = args.limit {
                cmd.args(["--limit", &l.to_string()]);
            }
            cmd.args(&mode.flags);
            let out = cmd.output().context("running evaluate")?;
            if !out.status.success() {
                bail!(
                    "evaluate ({}) failed: {}",
                    mode.label,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let json: Value =
                serde_json::from_slice(&out.stdout).context("evaluate --json output")?;
            for (task, r) in parse_report(&json)? {
                eprintln!(
                    "[bench] round {} {} {task}: {:.1} s",
                    round + 1,
                    mode.label,
                    r.seconds
                );
                match best.get(&task) {
                    Some(b) if b.seconds <= r.seconds => {}
                    _ => {
                        best.insert(task, r);
                    }
                }
            }
        }
    }
    println!(
        "\n{} on {} thread(s), {} docs per task, best of {} round(s); seconds per task (model load excluded)",
        args.model,
        args.threads,
        args.limit.map_or("all".into(), |l| l.to_string()),
        args.rounds
    );
    print!("| task | docs | requests |");
    for m in &modes {
        print!(" {} s (forward tokens) |", m.label);
    }
    for m in &modes[1..] {
        print!(" {} / shared |", m.label);
    }
    println!(" largest metric gap |");
    println!("|---|---|---|{}", "---|".repeat(2 * modes.len()));
    let mut totals = vec![0.0f64; modes.len()];
    for (task, shared) in &best[0] {
        let runs: Vec<&TaskRun> = best
            .iter()
            .map(|b| {
                b.get(task)
                    .with_context(|| format!("{task} missing in a mode"))
            })
            .collect::<Result<_>>()?;
        print!("| {task} | {} | {} |", shared.docs, shared.requests);
        for (r, t) in runs.iter().zip(totals.iter_mut()) {
            *t += r.seconds;
            print!(" {:.1} ({}) |", r.seconds, r.forward_tokens);
        }
        for r in &runs[1..] {
            print!(
                " {:.2}× |",
                r.seconds / shared.seconds.max(f64::MIN_POSITIVE)
            );
        }
        let gap = runs[1..]
            .iter()
            .map(|r| metric_gap(shared, r))
            .fold(0.0, f64::max);
        println!(" {gap:.2e} |");
    }
    print!("| **all** | | |");
    for t in &totals {
        print!(" **{t:.1}** |");
    }
    for t in &totals[1..] {
        print!(" **{:.2}×** |", t / totals[0].max(f64::MIN_POSITIVE));
    }
    println!(" |");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Value {
        serde_json::json!({"limit": 2, "model": "m", "suite_seconds": 3.0, "tasks": [
            {"task": "copa", "n": 2, "requests": 4, "forward_tokens": 40, "seconds": 1.5,
             "sharing": "prefix", "metrics": [{"name": "acc", "value": 0.5, "stderr": 0.5}]},
            {"task": "lambada_openai", "n": 2, "requests": 2, "forward_tokens": 90,
             "seconds": 1.5, "sharing": "prefix", "metrics": [
                {"name": "acc", "value": 0.5, "stderr": 0.5},
                {"name": "perplexity", "value": 40.0, "stderr": 1.0}]}]})
    }

    #[test]
    fn reads_tasks_from_the_json_report() {
        let r = parse_report(&report()).unwrap();
        assert_eq!(r["copa"].requests, 4);
        assert_eq!(r["lambada_openai"].forward_tokens, 90);
        assert_eq!(r["lambada_openai"].metrics[1], ("perplexity".into(), 40.0));
        let mut bad = report();
        bad["tasks"][0]["seconds"] = Value::Null;
        let e = parse_report(&bad).unwrap_err().to_string();
        assert!(e.contains("copa") && e.contains("seconds"), "{e}");
    }

    #[test]
    fn metric_gap_is_absolute_for_accuracy_and_relative_for_perplexity() {
        let r = parse_report(&report()).unwrap();
        let a = &r["lambada_openai"];
        let mut b = a.clone();
        b.metrics[1].1 = 40.4;
        assert!((metric_gap(a, &b) - 0.01).abs() < 1e-12);
        b.metrics[0].1 = 0.6;
        assert!((metric_gap(a, &b) - 0.1).abs() < 1e-12);
        assert_eq!(metric_gap(a, a), 0.0);
    }

    #[test]
    fn three_modes_select_evaluate_flags() {
        let m = modes(8);
        assert!(m[0].flags.is_empty());
        assert_eq!(m[1].flags, ["--no-prefix-sharing"]);
        assert_eq!(m[2].flags, ["--no-prefix-sharing", "--batch-size", "8"]);
    }
}
