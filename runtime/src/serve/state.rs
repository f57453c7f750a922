//! Building the server's shared state from an opened checkpoint: the served name, the
//! context limit, the chat template and the ids generation stops on.

use std::sync::Arc;

use super::chat::{chat_stop_ids, checkpoint_template, eos_ids};
use super::engine::{EngineHandle, EngineOptions};
use super::metrics::Metrics;
use super::routes::ServerState;
use crate::checkpoint::Checkpoint;
use crate::model::{LinearBackend, Llama};
use crate::speculative::Proposer;

/// Server settings from the command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The name clients pass as `model`.
    pub model_id: String,
    /// Cap on positions per request (default: the model's context).
    pub max_context: Option<usize>,
    pub max_body_bytes: usize,
    pub engine: EngineOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            model_id: "model".into(),
            max_context: None,
            max_body_bytes: 1 << 20,
            engine: EngineOptions::default(),
        }
    }
}

/// Starts the engine on `model` and gathers what the handlers share.
pub fn build_state<B: LinearBackend>(
    ckpt: &Checkpoint,
    model: Llama<B>,
    opts: ServeOptions,
    proposer: Option<Box<dyn Proposer + Send>>,
) -> anyhow::Result<Arc<ServerState>>
where
    Llama<B>: Send + 'static,
{
    let model_context = model.rope.max_positions();
    let context = opts.max_context.unwrap_or(model_context).min(model_context);
    let chat = checkpoint_template(ckpt)
        .map_err(|e| anyhow::anyhow!("the model's chat template does not compile: {e}"))?;
    Ok(Arc::new(ServerState {
        engine: EngineHandle::spawn(model, opts.engine, proposer),
        tokenizer: Arc::new(ckpt.tokenizer.clone()),
        model_id: opts.model_id,
        context,
        chat,
        eos_ids: eos_ids(ckpt),
        chat_stop_ids: chat_stop_ids(ckpt),
        max_body_bytes: opts.max_body_bytes,
        metrics: Metrics::default(),
    }))
}
