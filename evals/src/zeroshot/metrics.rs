//! From per-request log-likelihoods to lm-eval's per-question results and task figures:
//! `acc` = argmax of the log-likelihoods is gold, `acc_norm` = argmax of log-likelihood ÷
//! choice length in characters (Python `len`), ties to the first index (`np.argmax`); the
//! standard error of a mean is the sample standard deviation over √n (lm-eval's
//! `mean_stderr`).

use serde::Serialize;

use super::doc::Doc;
use super::registry::TaskKind;
use super::scorer::Scored;

/// One figure with its standard error.
#[derive(Debug, Clone, Serialize)]
pub struct MetricValue {
    pub name: String,
    pub value: f64,
    /// `None` where lm-eval's estimate is undefined (n < 2).
    pub stderr: Option<f64>,
}

/// A task's figures plus what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    /// Questions scored.
    pub n: usize,
    pub metrics: Vec<MetricValue>,
    /// Requests (continuations) scored.
    pub requests: usize,
    /// Token positions run through the model (padding included).
    pub forward_tokens: usize,
    /// `prefix` or `separate`.
    pub sharing: String,
    pub seconds: f64,
    /// Per-question log-likelihoods (`--log-samples`), for comparing against lm-eval's
    /// `--log_samples` output question by question.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<Sample>>,
}

/// One question's raw scores, in request order.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub lls: Vec<f64>,
    pub greedy: Vec<bool>,
    pub gold: usize,
}

/// The per-question outcome lm-eval's `process_results` computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocOutcome {
    pub acc: f64,
    pub acc_norm: f64,
    /// Log-likelihood of the gold continuation (LAMBADA's perplexity input).
    pub gold_ll: f64,
}

/// `np.argmax`: the first index of the largest value.
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// One question's outcome from its requests' scores (in request order).
pub fn doc_outcome(kind: TaskKind, doc: &Doc, scored: &[Scored]) -> DocOutcome {
    let lls: Vec<f64> = scored.iter().map(|s| s.ll).collect();
    match kind {
        TaskKind::Loglikelihood => DocOutcome {
            acc: f64::from(u8::from(scored[0].greedy)),
            acc_norm: f64::NAN,
            gold_ll: lls[0],
        },
        TaskKind::MultipleChoice { .. } => {
            let norm: Vec<f64> = lls
                .iter()
                .zip(&doc.choices)
                .map(|(ll, c)| ll / c.chars().count() as f64)
                .collect();
            DocOutcome {
                acc: f64::from(u8::from(argmax(&lls) == doc.gold)),
                acc_norm: f64::from(u8::from(argmax(&norm) == doc.gold)),
                gold_ll: lls[doc.gold],
            }
        }
    }
}

/// Arithmetic mean.
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// lm-eval's `mean_stderr`: sample standard deviation (n − 1) over √n; `None` for n < 2.
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let mu = mean(xs);
    let var = xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1) as f64;
    Some(var.sqrt() / (n as f64).sqrt())
}

/// The task's metrics, in lm-eval's `metric_list` order. LAMBADA's perplexity is
/// `exp(−mean(ll))` as lm-eval aggregates it; its standard error here is the delta-method
/// estimate `ppl · stderr(ll)` (lm-eval bootstraps it, so the two differ slightly).
pub fn aggregate(kind: TaskKind, outcomes: &[DocOutcome]) -> Vec<MetricValue> {
    let acc: Vec<f64> = outcomes.iter().map(|o| o.acc).collect();
    let metric = |name: &str, xs: &[f64]| MetricValue {
        name: name.to_string(),
        value: mean(xs),
        stderr: mean_stderr(xs),
    };
    match kind {
        TaskKind::Loglikelihood => {
            let lls: Vec<f64> = outcomes.iter().map(|o| o.gold_ll).collect();
            let ppl = (-mean(&lls)).exp();
            vec![
                MetricValue {
                    name: "perplexity".into(),
                    value: ppl,
                    stderr: mean_stderr(&lls).map(|s| ppl * s),
                },
                metric("acc", &acc),
            ]
        }
        TaskKind::MultipleChoice { acc_norm } => {
            let mut out = vec![metric("acc", &acc)];
            if acc_norm {
                let norm: Vec<f64> = outcomes.iter().map(|o| o.acc_norm).collect();
                out.push(metric("acc_norm", &norm));
            }
            out
        }
    }
}
