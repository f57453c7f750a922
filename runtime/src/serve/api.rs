//! Request bodies of `/v1/completions` and `/v1/chat/completions` and their validation into
//! what the engine runs. Fields the server does not implement are refused when set to
//! anything but their neutral value, rather than silently ignored; unknown fields are
//! ignored, as OpenAI-compatible servers do (clients send extras such as `user`).

use serde::Deserialize;

use super::chat::ChatMessage;
use super::error::ApiError;
use crate::sampling::SamplingParams;

/// Most alternatives per position a request may ask for.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most stop sequences per request.
pub const MAX_STOPS: usize = 4;

/// A prompt: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and length fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Keep generating past end-of-sequence tokens (vLLM's extension; for benchmarks that
    /// need exactly `max_tokens`).
    #[serde(default)]
    pub ignore_eos: bool,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub common: Common,
    /// Top alternatives per token (0 = the chosen token's log-probability only).
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Return the prompt before the completion (with its log-probabilities).
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub best_of: Option<u32>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
}

/// What both endpoints hand the engine after validation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub max_new: Option<usize>,
    pub params: SamplingParams,
    pub stops: Vec<String>,
}

impl Common {
    /// Checks ranges and unsupported settings; `seed` defaults to a fresh one per request.
    pub fn validate(&self, max_tokens: Option<i64>) -> Result<Generation, ApiError> {
        let max_new = match max_tokens {
            Some(m) if m < 0 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("max_tokens must be >= 0, got {m}"),
                ))
            }
            m => m.map(|m| m as usize),
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be in [0, 2], got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let top_k = match self.top_k.unwrap_or(-1) {
            -1 | 0 => 0,
            k if k > 0 => k as usize,
            k => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("top_k must be -1 (off) or positive, got {k}"),
                ))
            }
        };
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.unwrap_or(0.0) != 0.0 {
                return Err(ApiError::invalid(name, format!("{name} is not supported")));
            }
        }
        let stops = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                "stop",
                format!("at most {MAX_STOPS} stop sequences, got {}", stops.len()),
            ));
        }
        let seed = self.seed.unwrap_or_else(rand::random);
        Ok(Generation {
            max_new,
            params: SamplingParams {
                temperature,
                top_k,
                top_p,
                seed,
            },
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
        })
    }
}

/// Checks a top-logprobs count.
pub fn check_top(param: &'static str, n: Option<u32>) -> Result<Option<usize>, ApiError> {
    match n {
        Some(n) if n > MAX_TOP_LOGPROBS => Err(ApiError::invalid(
            param,
            format!("{param} must be at most {MAX_TOP_LOGPROBS}, got {n}"),
        )),
        n => Ok(n.map(|n| n as usize)),
    }
}
