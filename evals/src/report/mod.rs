//! One report for several models side by side: size on disk, bits per parameter,
//! perplexity, each task's accuracy and their average, as a terminal/markdown table,
//! `report.json`, and an SVG plot of perplexity and average accuracy against size
//! ([`svg`]). The figures come from `evaluate`'s runs; nothing here touches a model.

pub mod svg;

use std::path::Path;

use lmq_runtime::config::ModelConfig;
use serde::{Deserialize, Serialize};

/// One task's headline figure in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskFigure {
    pub task: String,
    /// `acc_norm` where the task has it (lm-eval's usual headline for multiple choice with
    /// endings of different lengths), `acc` otherwise.
    pub metric: String,
    pub value: f64,
    pub stderr: Option<f64>,
}

/// One model's row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelRow {
    /// Short label (the directory or file name).
    pub name: String,
    pub path: String,
    /// Bytes of weights on disk (`*.safetensors` of a directory, or the `.gguf` file).
    pub size_bytes: u64,
    /// Parameters of the architecture (embedding counted once when tied).
    pub params: u64,
    pub ppl: Option<f64>,
    pub tasks: Vec<TaskFigure>,
}

impl ModelRow {
    /// File bits per parameter: everything stored (scales, float embeddings, norms) over
    /// the parameter count, so it is what the file costs, not the nominal weight width.
    pub fn bits_per_param(&self) -> f64 {
        self.size_bytes as f64 * 8.0 / self.params.max(1) as f64
    }

    /// Mean of the task figures (None without tasks).
    pub fn average(&self) -> Option<f64> {
        (!self.tasks.is_empty())
            .then(|| self.tasks.iter().map(|t| t.value).sum::<f64>() / self.tasks.len() as f64)
    }
}

/// Parameters of a Llama/Qwen2 model from its config.
pub fn param_count(c: &ModelConfig) -> u64 {
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let mut layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d;
    if c.attention_bias {
        layer += q + 2 * kv;
    }
    let head = if c.tie_word_embeddings { 0 } else { v * d };
    (v * d + c.num_layers * layer + d + head) as u64
}

/// Bytes of weights a checkpoint path holds on disk.
pub fn size_on_disk(path: &Path) -> std::io::Result<u64> {
    if path.is_file() {
        return Ok(path.metadata()?.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(path)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            total += p.metadata()?.len();
        }
    }
    Ok(total)
}

/// The union of task names over the rows, in first-seen order.
fn task_names(rows: &[ModelRow]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for t in rows.iter().flat_map(|r| &r.tasks) {
        if !names.contains(&t.task) {
            names.push(t.task.clone());
        }
    }
    names
}

/// The report as a markdown table (also what the terminal shows). `ppl_label` says which
/// perplexity it is (text, window length, windows).
pub fn markdown(rows: &[ModelRow], ppl_label: &str) -> String {
    let tasks = task_names(rows);
    let mut head = vec![
        "model".to_owned(),
        "size MB".to_owned(),
        "bits/param".to_owned(),
        format!("ppl ({ppl_label})"),
    ];
    for t in &tasks {
        let metric = rows
            .iter()
            .flat_map(|r| &r.tasks)
            .find(|x| &x.task == t)
            .map_or("acc", |x| x.metric.as_str());
        head.push(format!("{t} {metric}"));
    }
    if !tasks.is_empty() {
        head.push("average".into());
    }
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in rows {
        let mut cells = vec![
            r.name.clone(),
            format!("{:.1}", r.size_bytes as f64 / 1e6),
            format!("{:.2}", r.bits_per_param()),
            r.ppl.map_or("–".into(), |p| format!("{p:.4}")),
        ];
        for t in &tasks {
            cells.push(match r.tasks.iter().find(|x| &x.task == t) {
                Some(x) => match x.stderr {
                    Some(s) => format!("{:.4} ± {:.4}", x.value, s),
                    None => format!("{:.4}", x.value),
                },
                None => "–".into(),
            });
        }
        if !tasks.is_empty() {
            cells.push(r.average().map_or("–".into(), |a| format!("{a:.4}")));
        }
        out += &format!("| {} |\n", cells.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lmq_runtime::config::Arch;
    use lmq_runtime::weights::tiny_config;

    fn row(name: &str, size: u64, ppl: Option<f64>, accs: &[(&str, f64)]) -> ModelRow {
        ModelRow {
            name: name.into(),
            path: format!("/m/{name}"),
            size_bytes: size,
            params: 1000,
            ppl,
            tasks: accs
                .iter()
                .map(|(t, v)| TaskFigure {
                    task: (*t).into(),
                    metric: "acc".into(),
                    value: *v,
                    stderr: Some(0.01),
                })
                .collect(),
        }
    }

    #[test]
    fn table_has_every_model_task_and_the_average() {
        let rows = [
            row("f32", 4000, Some(28.7), &[("piqa", 0.6), ("boolq", 0.4)]),
            row("w4", 500, Some(37.7), &[("piqa", 0.5)]),
        ];
        let md = markdown(&rows, "wiki2 512 × 40");
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4, "{md}");
        assert!(lines[0].contains("ppl (wiki2 512 × 40)") && lines[0].contains("boolq acc"));
        assert!(lines[2].starts_with("| f32 | 0.0 | 32.00 | 28.7000 | 0.6000 ± 0.0100"));
        assert!(lines[2].ends_with("| 0.5000 |"), "{}", lines[2]);
        // A task a model was not run on is a dash, and its average covers what it has.
        assert!(lines[3].contains("| – |") && lines[3].ends_with("| 0.5000 |"));
        assert_eq!(rows[1].bits_per_param(), 4.0);
    }

    #[test]
    fn parameters_follow_the_config() {
        let c = tiny_config(Arch::Llama); // tied, no biases
        let (d, f, v) = (32u64, 48, 50);
        let layer = d * 32 + 2 * d * 16 + 32 * d + 3 * d * f + 2 * d;
        assert_eq!(param_count(&c), v * d + 2 * layer + d);
        let q = tiny_config(Arch::Qwen2); // untied, q/k/v biases
        assert_eq!(param_count(&q), param_count(&c) + v * d + 2 * (32 + 2 * 16));
    }
}
