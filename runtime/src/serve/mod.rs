//! `serve-local`: an OpenAI-compatible HTTP server (completions, chat, streaming, logprobs
//! with echo for lm-eval's `local-completions`) over one model, with continuous batching.
//! Layout: `api` (request schema and validation), `engine` (the batching scheduler thread),
//! `routes` (handlers and the router), and small pure parts (`stop`, `text`, `logprobs`,
//! `chat`, `metrics`, `error`).

pub mod api;
pub mod chat;
pub mod engine;
pub mod error;
pub mod logprobs;
pub mod metrics;
pub mod routes;
pub mod state;
pub mod stop;
pub mod text;

pub use routes::{app, AppState, ServerState};
pub use state::{build_state, ServeOptions};
