//! The tokenizer, rebuilt from GGUF metadata (`tokenizer.ggml.*`) or loaded from an HF
//! `tokenizer.json`.
//!
//! Our source checkpoints only exist as GGUF files, which carry the vocabulary, the BPE merges,
//! the token types and the name of llama.cpp's pre-tokenizer, but no `tokenizer.json`. This
//! module turns that metadata into a [`tokenizers::Tokenizer`] configured the way Hugging Face's
//! own `tokenizer.json` for the same model family is (byte-level BPE, the family's split regex,
//! control tokens as special added tokens), so token ids match both transformers and llama.cpp
//! and the result can be written out as a `tokenizer.json` that transformers loads.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the pre-tokenizer families
//! listed in [`SUPPORTED_PRE`]. The BPE itself is the `tokenizers` crate's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

/// GGUF token type of an ordinary vocabulary entry (`LLAMA_TOKEN_TYPE_NORMAL`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// GGUF token type of a control token such as `<|im_start|>` (`LLAMA_TOKEN_TYPE_CONTROL`):
/// an added token with the special flag, skipped by `decode(.., skip_special = true)`.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined token (`LLAMA_TOKEN_TYPE_USER_DEFINED`): an added token
/// matched verbatim in the input, but not special.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The `tokenizer.ggml.pre` values this module can rebuild, grouped by the llama.cpp
/// pre-tokenizer they map to (see `src/llama-vocab.cpp`). Listed in error messages.
pub const SUPPORTED_PRE: &[&str] = &[
    // LLAMA_VOCAB_PRE_TYPE_GPT2
    "gpt-2",
    "phi-2",
    "mpt",
    "olmo",
    "jais",
    "exaone4",
    // LLAMA_VOCAB_PRE_TYPE_STARCODER and the types sharing its regexes
    "starcoder",
    "refact",
    "command-r",
    "smollm",
    "codeshell",
    "exaone",
    "minerva-7b",
    // LLAMA_VOCAB_PRE_TYPE_QWEN2
    "qwen2",
    "deepseek-r1-qwen",
    "megrez",
    // LLAMA_VOCAB_PRE_TYPE_LLAMA3
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
];

/// Errors while reading tokenizer metadata, building the tokenizer, or encoding/decoding.
/// Metadata errors name the file and the key so that a broken model file is easy to diagnose.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required GGUF key is absent or has the wrong type.
    #[error("{}: tokenizer metadata key `{key}` is missing or not {expected}", path.display())]
    MissingKey {
        path: PathBuf,
        key: &'static str,
        expected: &'static str,
    },
    /// A GGUF key is present but its value is unusable.
    #[error("{}: tokenizer metadata key `{key}`: {msg}", path.display())]
    BadValue {
        path: PathBuf,
        key: &'static str,
        msg: String,
    },
    /// The tokenizer model or pre-tokenizer type is not one this module can rebuild.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The `tokenizers` library rejected the vocabulary/merges we built from the metadata.
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
    /// A `tokenizer.json` (or the `tokenizer_config.json` beside it) could not be loaded.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// Encoding failed inside the `tokenizers` library.
    #[error("encode failed: {0}")]
    Encode(tokenizers::Error),
    /// Decoding failed inside the `tokenizers` library.
    #[error("decode failed: {0}")]
    Decode(tokenizers::Error),
}

/// Everything GGUF stores about the tokenizer (the `tokenizer.ggml.*` and
/// `tokenizer.chat_template` keys), kept as plain data so the tokenizer can be rebuilt, tested
/// and compared without the GGUF file at hand.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTokenizerSpec {
    /// `tokenizer.ggml.model`: the tokenizer kind (`"gpt2"` = byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: llama.cpp's name for the pre-tokenizer (split regexes).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the token strings, index = id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`: BPE merges, `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type`: one GGUF token type per token (1 normal, 3 control,
    /// 4 user-defined, ...); all normal if the key is absent.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`, or llama.cpp's default for the pre-tokenizer when absent.
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token` (default false).
    pub add_eos: bool,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

impl GgufTokenizerSpec {
    /// Reads the tokenizer metadata of an opened GGUF file. Fails, naming the file and key,
    /// when the tokens or merges are missing or when arrays disagree in length.
    pub fn from_gguf(g: &crate::gguf::GgufFile) -> Result<Self, TokenizerError> {
        let path = g.path().to_path_buf();
        let missing = |key: &'static str, expected: &'static str| TokenizerError::MissingKey {
            path: path.clone(),
            key,
            expected,
        };
        let model = g
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| missing("tokenizer.ggml.model", "a string"))?
            .to_owned();
        let pre = g.get_str("tokenizer.ggml.pre").map(str::to_owned);
        let tokens: Vec<String> = g
            .get_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| missing("tokenizer.ggml.tokens", "an array of strings"))?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let merges: Vec<String> = match g.get("tokenizer.ggml.merges") {
            None => Vec::new(),
            Some(_) => g
                .get_str_array("tokenizer.ggml.merges")
                .ok_or_else(|| missing("tokenizer.ggml.merges", "an array of strings"))?
                .into_iter()
                .map(str::to_owned)
                .collect(),
        };
        let token_types: Vec<i32> = match g.get("tokenizer.ggml.token_type") {
            None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
            Some(_) => g
                .get_i64_array("tokenizer.ggml.token_type")
                .ok_or_else(|| missing("tokenizer.ggml.token_type", "an array of integers"))?
                .into_iter()
                .map(|t| i32::try_from(t).unwrap_or(0))
                .collect(),
        };
        if token_types.len() != tokens.len() {
            return Err(TokenizerError::BadValue {
                path,
                key: "tokenizer.ggml.token_type",
                msg: format!(
                    "{} entries but tokenizer.ggml.tokens has {}",
                    token_types.len(),
                    tokens.len()
                ),
            });
        }
        let id = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
            match g.get(key) {
                None => Ok(None),
                Some(_) => match g.get_u64(key).and_then(|v| u32::try_from(v).ok()) {
                    Some(v) if (v as usize) < tokens.len() => Ok(Some(v)),
                    _ => Err(TokenizerError::BadValue {
                        path: path.clone(),
                        key,
                        msg: format!("not a token id below the vocabulary size {}", tokens.len()),
                    }),
                },
            }
        };
        let bos_id = id("tokenizer.ggml.bos_token_id")?;
        let eos_id = id("tokenizer.ggml.eos_token_id")?;
        let pad_id = id("tokenizer.ggml.padding_token_id")?;
        let add_bos = g
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or_else(|| default_add_bos(&model, pre.as_deref()));
        let add_eos = g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let chat_template = g.get_str("tokenizer.chat_template").map(str::to_owned);
        Ok(Self {
            model,
            pre,
            tokens,
            merges,
            token_types,
            bos_id,
            eos_id,
            pad_id,
            add_bos,
            add_eos,
            chat_template,
        })
    }
}

/// llama.cpp's `add_bos` default when the GGUF has no `tokenizer.ggml.add_bos_token`: true for
/// SentencePiece models and for the Llama-3 family of BPE pre-tokenizers, false otherwise.
fn default_add_bos(model: &str, pre: Option<&str>) -> bool {
    match model {
        "gpt2" => matches!(
            pre,
            Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "tekken" | "chameleon")
        ),
        "llama" | "bert" => true,
        _ => false,
    }
}

/// The pre-tokenizer families we can rebuild, each mirroring HF's `tokenizer.json` for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreKind {
    /// GPT-2: `ByteLevel(use_regex = true)` (the GPT-2 regex inside ByteLevel).
    Gpt2,
    /// StarCoder/SmolLM: `Digits(individual)` then GPT-2's ByteLevel.
    StarCoder,
    /// Qwen2: NFC, then `Split(qwen2 regex, Isolated)` and a regex-free ByteLevel.
    Qwen2,
    /// Llama 3: `Split(llama3 regex, Isolated)` and a regex-free ByteLevel; BPE `ignore_merges`.
    Llama3,
}

/// Qwen2's split regex, as in its `tokenizer.json` (llama.cpp's QWEN2 regex is this with the
/// case-insensitive group spelled out).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split regex, as in its `tokenizer.json` (digits in groups of up to three).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_kind(pre: Option<&str>) -> Result<PreKind, TokenizerError> {
    let Some(pre) = pre else {
        return Err(TokenizerError::Unsupported(format!(
            "`tokenizer.ggml.pre` is missing (llama.cpp would fall back to its degraded 'default' \
             regexes); supported values: {}",
            SUPPORTED_PRE.join(", ")
        )));
    };
    Ok(match pre {
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "exaone4" => PreKind::Gpt2,
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            PreKind::StarCoder
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => PreKind::Qwen2,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => PreKind::Llama3,
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "pre-tokenizer `tokenizer.ggml.pre = {other}`; supported values: {}",
                SUPPORTED_PRE.join(", ")
            )))
        }
    })
}

fn split_isolated(regex: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    Split::new(
        SplitPattern::Regex(regex.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map(Into::into)
    .map_err(|e| TokenizerError::Build(format!("split regex: {e}")))
}

/// The byte-level BPE tokenizer used by the runtime: a `tokenizers::Tokenizer` plus the
/// model-level facts (special ids, BOS policy, chat template) that live outside it.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token string per id (the GGUF vocabulary, or the HF vocab inverted).
    tokens: Vec<String>,
    /// GGUF token type per id.
    token_types: Vec<i32>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata, configured like HF's `tokenizer.json` for the
    /// model family named by `spec.pre`, so ids match transformers (and llama.cpp).
    pub fn from_spec(spec: &GgufTokenizerSpec) -> Result<Self, TokenizerError> {
        if spec.model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "`tokenizer.ggml.model = {}` (only byte-level BPE, `gpt2`, is supported)",
                spec.model
            )));
        }
        if spec.token_types.len() != spec.tokens.len() {
            return Err(TokenizerError::Build(format!(
                "{} token types for {} tokens",
                spec.token_types.len(),
                spec.tokens.len()
            )));
        }
        let kind = pre_kind(spec.pre.as_deref())?;

        // Like llama.cpp's `token_to_id[text] = id`, a repeated string keeps its last id.
        let vocab: Vocab = spec
            .tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let merges: Merges = spec
            .merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                split_merge(m).ok_or_else(|| {
                    TokenizerError::Build(format!(
                        "merge #{i} `{m}` is not two space-separated tokens"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(kind == PreKind::Llama3)
            .build()
            .map_err(|e| TokenizerError::Build(format!("BPE model: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre: PreTokenizerWrapper = match kind {
            PreKind::Gpt2 => ByteLevel::new(false, true, true).into(),
            PreKind::StarCoder => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            PreKind::Qwen2 => Sequence::new(vec![
                split_isolated(QWEN2_REGEX)?,
                ByteLevel::new(false, false, false).into(),
            ])
            .into(),
            PreKind::Llama3 => Sequence::new(vec![
                split_isolated(LLAMA3_REGEX)?,
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
        };
        if kind == PreKind::Qwen2 {
            inner.with_normalizer(Some(NFC));
        }
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.with_post_processor(Some(post_processor(spec)?));

        // Control tokens are special added tokens; user-defined ones are matched verbatim but
        // decoded like text. Both are matched before pre-tokenization, on the raw input.
        let added: Vec<AddedToken> = spec
            .tokens
            .iter()
            .zip(&spec.token_types)
            .filter(|(t, ty)| {
                !t.is_empty() && matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED)
            })
            .map(|(t, ty)| AddedToken::from(t.clone(), *ty == TOKEN_TYPE_CONTROL).normalized(false))
            .collect();
        inner.add_special_tokens(&added);

        Ok(Self {
            inner,
            tokens: spec.tokens.clone(),
            token_types: spec.token_types.clone(),
            bos_id: spec.bos_id,
            eos_id: spec.eos_id,
            pad_id: spec.pad_id,
            add_bos: spec.add_bos,
            add_eos: spec.add_eos,
            chat_template: spec.chat_template.clone(),
        })
    }

    /// Loads an HF `tokenizer.json` (as written by [`Tokenizer::to_json`] or shipped with a
    /// model). BOS/EOS, `add_bos_token` and the chat template come from a
    /// `tokenizer_config.json` beside it when there is one.
    pub fn from_file(tokenizer_json: &Path) -> Result<Self, TokenizerError> {
        let file_err = |msg: String| TokenizerError::File {
            path: tokenizer_json.to_path_buf(),
            msg,
        };
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| file_err(e.to_string()))?;
        let n = inner.get_vocab_size(true);
        let mut tokens = vec![String::new(); n];
        let mut token_types = vec![TOKEN_TYPE_NORMAL; n];
        for (tok, id) in inner.get_vocab(true) {
            let id = id as usize;
            if id >= tokens.len() {
                tokens.resize(id + 1, String::new());
                token_types.resize(id + 1, TOKEN_TYPE_NORMAL);
            }
            tokens[id] = tok;
        }
        for (id, t) in inner.get_added_tokens_decoder() {
            if let Some(ty) = token_types.get_mut(id as usize) {
                *ty = if t.special {
                    TOKEN_TYPE_CONTROL
                } else {
                    TOKEN_TYPE_USER_DEFINED
                };
            }
        }

        let config_path = tokenizer_json.with_file_name("tokenizer_config.json");
        let config: Option<serde_json::Value> = match std::fs::read_to_string(&config_path) {
            Ok(text) => Some(
                serde_json::from_str(&text).map_err(|e| TokenizerError::File {
                    path: config_path.clone(),
                    msg: e.to_string(),
                })?,
            ),
            Err(_) => None,
        };
        let field = |k: &str| config.as_ref().and_then(|c| c.get(k));
        // A special token is either a plain string or an AddedToken object with `content`.
        let token_id = |k: &str| {
            let v = field(k)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        let bos_id = token_id("bos_token");
        let eos_id = token_id("eos_token");
        let pad_id = token_id("pad_token");
        // Whether BOS is added is decided by the post-processor; report what it does.
        let probe = inner
            .encode_fast("a", true)
            .map_err(|e| file_err(format!("cannot encode a probe string: {e}")))?;
        let add_bos = bos_id.is_some_and(|b| probe.get_ids().first() == Some(&b));
        let add_eos = eos_id.is_some_and(|e| probe.get_ids().last() == Some(&e));
        let chat_template = field("chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        Ok(Self {
            inner,
            tokens,
            token_types,
            bos_id,
            eos_id,
            pad_id,
            add_bos,
            add_eos,
            chat_template,
        })
    }

    /// The HF `tokenizer.json` content for this tokenizer, so an exported checkpoint loads in
    /// transformers (`PreTrainedTokenizerFast`) with the same ids.
    pub fn to_json(&self) -> String {
        self.inner
            .to_string(false)
            .expect("a tokenizer built in memory always serializes")
    }

    /// Token ids of `text`. Special-token strings in the text (e.g. `<|im_start|>`) are
    /// recognised. With `add_special`, BOS/EOS are added only where the model's
    /// `add_bos`/`add_eos` say so (SmolLM2 and Qwen2 add nothing; Llama 3 adds BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(TokenizerError::Encode)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`. With `skip_special`, control tokens (BOS, `<|im_end|>`, ...) are left
    /// out. Invalid UTF-8 (a cut multi-byte character) is replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.tokens.len()) {
            return Err(TokenizerError::Decode(
                format!(
                    "token id {bad} is outside the vocabulary ({})",
                    self.tokens.len()
                )
                .into(),
            ));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(TokenizerError::Decode)
    }

    /// The raw bytes token `id` stands for (byte-level decoded; control and user-defined tokens
    /// give their text). Bytes, not a `String`: one token may hold part of a UTF-8 character,
    /// which is what streaming output needs to buffer. `None` for an id outside the vocabulary.
    pub fn token_to_piece(&self, id: u32) -> Option<Vec<u8>> {
        let tok = self.tokens.get(id as usize)?;
        let ty = self.token_types[id as usize];
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            return Some(tok.as_bytes().to_vec());
        }
        let map = char_to_byte();
        tok.chars()
            .map(|c| map.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            .or_else(|| Some(tok.as_bytes().to_vec()))
    }

    /// The vocabulary string of token `id` (byte-level form, e.g. `"Ġthe"`), as stored in the
    /// model; used to name special tokens in exported configs.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the vocabulary string `token` (exact match, byte-level form).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of token ids (the model's embedding rows must cover at least this many).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence token (generation stops on it), if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The padding token, if the model names one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Whether `encode(.., add_special = true)` prepends BOS (GGUF `add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true)` appends EOS (GGUF `add_eos_token`).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The model's Jinja chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Whether `id` is a control token (BOS/EOS, chat markers), i.e. not text.
    pub fn is_control(&self, id: u32) -> bool {
        self.token_types.get(id as usize) == Some(&TOKEN_TYPE_CONTROL)
    }

    /// The underlying `tokenizers` tokenizer, for callers needing offsets or batch APIs.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Splits a GGUF merge `"left right"` like llama.cpp does: at the first space after the first
/// byte (so a left part that is itself a space still works).
fn split_merge(m: &str) -> Option<(String, String)> {
    let first_len = m.chars().next()?.len_utf8();
    let pos = m[first_len..].find(' ')? + first_len;
    Some((m[..pos].to_owned(), m[pos + 1..].to_owned()))
}

/// The post-processor: BOS/EOS insertion when the model asks for it (HF's Llama-3 layout),
/// otherwise HF's plain ByteLevel processor (offsets only).
fn post_processor(spec: &GgufTokenizerSpec) -> Result<PostProcessorWrapper, TokenizerError> {
    let tok = |id: Option<u32>, what: &str| -> Result<(String, u32), TokenizerError> {
        let id = id.ok_or_else(|| {
            TokenizerError::Build(format!("add_{what}_token is set but there is no {what} id"))
        })?;
        let token = spec.tokens.get(id as usize).ok_or_else(|| {
            TokenizerError::Build(format!("{what} id {id} is outside the vocabulary"))
        })?;
        Ok((token.clone(), id))
    };
    let bos = spec.add_bos.then(|| tok(spec.bos_id, "bos")).transpose()?;
    let eos = spec.add_eos.then(|| tok(spec.eos_id, "eos")).transpose()?;
    if bos.is_none() && eos.is_none() {
        return Ok(ByteLevelProcessor::new(false, false, false).into());
    }
    let (mut single, mut pair) = (String::new(), String::new());
    if let Some((b, _)) = &bos {
        single.push_str(&format!("{b}:0 "));
        pair.push_str(&format!("{b}:0 "));
    }
    single.push_str("$A:0");
    pair.push_str("$A:0");
    if let Some((e, _)) = &eos {
        single.push_str(&format!(" {e}:0"));
        pair.push_str(&format!(" {e}:0"));
    }
    if let Some((b, _)) = &bos {
        pair.push_str(&format!(" {b}:1"));
    }
    pair.push_str(" $B:1");
    if let Some((e, _)) = &eos {
        pair.push_str(&format!(" {e}:1"));
    }
    let specials: Vec<(String, u32)> = bos.into_iter().chain(eos).collect();
    TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| TokenizerError::Build(format!("post-processor template: {e}")))?
        .special_tokens(specials)
        .build()
        .map(Into::into)
        .map_err(|e| TokenizerError::Build(format!("post-processor: {e}")))
}

/// GPT-2's byte-to-unicode table inverted: the char each byte is written as in a byte-level
/// vocabulary, back to the byte.
fn char_to_byte() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut next = 256u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    next += 1;
                    char::from_u32(next - 1).expect("valid code point")
                };
                (c, b)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_split_at_first_space_after_first_char() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ".into(), "t".into())));
        assert_eq!(split_merge("  a"), Some((" ".into(), "a".into())));
        assert_eq!(split_merge("ab"), None);
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let m = char_to_byte();
        assert_eq!(m.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
        assert_eq!(m[&'a'], b'a');
    }

    fn tiny_spec(pre: &str) -> GgufTokenizerSpec {
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into()];
        let map = char_to_byte();
        let mut chars: Vec<(u8, char)> = map.iter().map(|(c, b)| (*b, *c)).collect();
        chars.sort();
        tokens.extend(chars.iter().map(|(_, c)| c.to_string()));
        tokens.extend(["Ġt", "he", "Ġthe"].map(String::from));
        let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
        token_types[0] = TOKEN_TYPE_CONTROL;
        GgufTokenizerSpec {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            merges: vec!["Ġ t".into(), "h e".into(), "Ġt he".into()],
            token_types,
            bos_id: Some(0),
            eos_id: Some(0),
            pad_id: None,
            add_bos: false,
            add_eos: false,
            chat_template: None,
        }
    }

    #[test]
    fn tiny_vocab_round_trips_for_every_family() {
        for pre in ["gpt-2", "smollm", "qwen2", "llama-bpe"] {
            let spec = tiny_spec(pre);
            let tok = Tokenizer::from_spec(&spec).unwrap();
            let ids = tok.encode(" the<|endoftext|>x 12", false).unwrap();
            assert_eq!(tok.id_to_token(ids[0]), Some("Ġthe"), "{pre}");
            assert_eq!(ids[1], 0, "{pre}");
            assert_eq!(tok.decode(&ids, false).unwrap(), " the<|endoftext|>x 12");
            assert_eq!(tok.decode(&ids, true).unwrap(), " thex 12");
            assert_eq!(tok.token_to_piece(ids[0]).unwrap(), b" the");
        }
    }

    #[test]
    fn add_bos_follows_the_spec() {
        let mut spec = tiny_spec("gpt-2");
        assert_eq!(
            Tokenizer::from_spec(&spec)
                .unwrap()
                .encode("t", true)
                .unwrap()
                .len(),
            1
        );
        spec.add_bos = true;
        let tok = Tokenizer::from_spec(&spec).unwrap();
        assert_eq!(tok.encode("t", true).unwrap()[0], 0);
        assert_eq!(tok.encode("t", false).unwrap().len(), 1);
    }

    #[test]
    fn unknown_pre_is_an_error_listing_supported_ones() {
        let err = Tokenizer::from_spec(&tiny_spec("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope") && err.contains("qwen2"), "{err}");
    }

    #[test]
    fn to_json_reloads_with_same_ids() {
        let mut spec = tiny_spec("qwen2");
        spec.add_bos = true;
        let tok = Tokenizer::from_spec(&spec).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, tok.to_json()).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        let text = "the 12 <|endoftext|> é";
        assert_eq!(
            back.encode(text, true).unwrap(),
            tok.encode(text, true).unwrap()
        );
        assert_eq!(back.vocab_size(), tok.vocab_size());
        assert!(back.is_control(0));
    }
}
