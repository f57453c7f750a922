//! Building the server's shared state from an opened checkpoint: the served name, the
//! context limit, the chat template and the ids generation stops on.

use std::sync::Arc;

use super::chat::ChatTemplate;
use super::engine::{EngineHandle, EngineOptions};
use super::metrics::Metrics;
use super::routes::ServerState;
use crate::checkpoint::Checkpoint;
use crate::model::{LinearBackend, Llama};
use crate::speculative::Proposer;

/// End-of-turn markers of common chat templates; chat generation stops on those present.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

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
    let tok = &ckpt.tokenizer;
    let model_context = model.rope.max_positions();
    let context = opts.max_context.unwrap_or(model_context).min(model_context);
    let name = |id: Option<u32>| {
        id.and_then(|i| tok.id_to_token(i))
            .unwrap_or_default()
            .to_owned()
    };
    let chat = match ckpt.chat_template.as_deref().or(tok.chat_template()) {
        Some(src) => Some(
            ChatTemplate::new(src, &name(tok.bos_id()), &name(tok.eos_id()))
                .map_err(|e| anyhow::anyhow!("the model's chat template does not compile: {e}"))?,
        ),
        None => None,
    };
    let mut eos_ids = ckpt.config.eos_token_ids.clone();
    eos_ids.extend(tok.eos_id());
    eos_ids.sort_unstable();
    eos_ids.dedup();
    let mut chat_stop_ids = eos_ids.clone();
    chat_stop_ids.extend(END_OF_TURN.iter().filter_map(|t| tok.token_to_id(t)));
    chat_stop_ids.sort_unstable();
    chat_stop_ids.dedup();
    Ok(Arc::new(ServerState {
        engine: EngineHandle::spawn(model, opts.engine, proposer),
        tokenizer: Arc::new(tok.clone()),
        model_id: opts.model_id,
        context,
        chat,
        eos_ids,
        chat_stop_ids,
        max_body_bytes: opts.max_body_bytes,
        metrics: Metrics::default(),
    }))
}
