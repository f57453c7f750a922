//! `targets` and `ignore` entries and their resolution against a checkpoint's tensor names.
//!
//! Matching follows compressed-tensors' `match_name`: an entry is an exact name, or `re:`
//! followed by a regular expression applied with Python's `re.match` semantics (anchored at
//! the start, not at the end). Entries are tried against both the module name
//! (`model.layers.0.self_attn.q_proj`, what llm-compressor recipes name) and the tensor name
//! (`….q_proj.weight`), so recipes written either way work. `Linear` (llm-compressor's
//! default target, a class name there) selects every linear weight.

use std::fmt;

use regex::Regex;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// One `targets`/`ignore` entry.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// `Linear`: every linear weight.
    Linear,
    /// An exact module or tensor name.
    Exact(String),
    /// `re:<regex>`; `source` is the text after `re:`, `regex` it anchored at the start.
    Regex { source: String, regex: Regex },
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Display for Pattern {
    /// As written in the recipe.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Linear => f.write_str("Linear"),
            Self::Exact(s) => f.write_str(s),
            Self::Regex { source, .. } => write!(f, "re:{source}"),
        }
    }
}

impl Pattern {
    /// Parses an entry; an invalid regex is an error carrying the regex crate's explanation.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "Linear" {
            return Ok(Self::Linear);
        }
        if let Some(source) = s.strip_prefix("re:") {
            if source.is_empty() {
                return Err("`re:` needs a regular expression after it".into());
            }
            // Checked on its own first, so the error speaks of what the user wrote rather
            // than of the anchored form; regex's multi-line report is cut to its reason.
            if let Err(e) = Regex::new(source) {
                let text = e.to_string();
                let reason = text
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("error: "))
                    .unwrap_or(&text);
                return Err(format!("invalid regular expression `{s}`: {reason}"));
            }
            return Regex::new(&format!("^(?:{source})"))
                .map(|regex| Self::Regex {
                    source: source.to_owned(),
                    regex,
                })
                .map_err(|e| format!("invalid regular expression `{s}`: {e}"));
        }
        if s.is_empty() {
            return Err("empty name".into());
        }
        Ok(Self::Exact(s.to_owned()))
    }

    /// Whether the entry selects the linear weight `tensor` (module `module`).
    pub fn matches(&self, module: &str, tensor: &str) -> bool {
        match self {
            Self::Linear => true,
            Self::Exact(s) => s == module || s == tensor,
            Self::Regex { regex, .. } => regex.is_match(module) || regex.is_match(tensor),
        }
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Pattern;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a module/tensor name, `re:<regex>` or `Linear`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Pattern::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The module of a linear weight: `Some("….q_proj")` for `….q_proj.weight`, `None` for
/// anything that is not a linear weight. Linear layers are recognised by the Llama/Qwen2 HF
/// naming every checkpoint source produces (`weights/` maps GGUF names onto it): modules
/// named `*_proj` and `lm_head`. Embeddings, norms and biases are never quantization targets.
pub fn linear_module(tensor: &str) -> Option<&str> {
    let module = tensor.strip_suffix(".weight")?;
    let last = module.rsplit('.').next().unwrap_or(module);
    (last.ends_with("_proj") || last == "lm_head").then_some(module)
}

/// The weights one pass applies to, after `targets` and `ignore`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassTargets {
    /// Index of the stage in `stages`.
    pub stage: usize,
    /// Index of the pass in the stage's `passes`.
    pub pass: usize,
    /// The pass's YAML key (`rtn`, `gptq`).
    pub kind: &'static str,
    /// Key path of the pass, `stages[0].passes[1].gptq`, for messages.
    pub key: String,
    /// Selected tensor names (`….weight`), in the order they were given.
    pub tensors: Vec<String>,
}
