//! Recipes: YAML files that say what `quantize` does. The schema is strict (unknown keys,
//! wrong types and bad values are errors that name the file, the line and the key), because a
//! misspelled option silently ignored is how a "4-bit" model ends up 16-bit.
//!
//! ```yaml
//! output: {dtype: f32}                       # f32 | bf16, for tensors left unquantized
//! calibration: {source: hellaswag, num_samples: 128, seqlen: 2048, seed: 0}
//! stages:
//!   - name: quantize                         # optional label
//!     passes:
//!       - gptq: {scheme: W4A16, group_size: 64, act_order: true, static_groups: true,
//!                dampening: 0.01, block_size: 128, targets: ["re:.*_proj$"], ignore: [lm_head]}
//! ```
//!
//! * [`schema`]: the structs, and the value newtypes that check themselves while parsing
//!   (so serde_yaml reports their line and key path).
//! * [`targets`]: `targets`/`ignore` patterns and their resolution against tensor names
//!   ([`Recipe::resolve_targets`]).
//!
//! Checks that involve several fields or the whole recipe run in [`Recipe::validate`] after
//! parsing; serde_yaml keeps no spans on parsed values, so those errors carry the key path and
//! a line found by searching the text for the key (see [`locate`]).

pub mod schema;
pub mod targets;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use schema::{
    Alpha, AwqArgs, Bits, CalibrationSource, CalibrationSpec, Dampening, FloatDtype, GptqArgs,
    GroupSize, LearningRate, MappingAlpha, MedusaSpec, NonNegative, OneBitSpec, OutputSpec, Pass,
    PassArgs, Positive, RtnArgs, SchemeName, SmoothQuantArgs, Stage, TokenClip,
};
pub use targets::{linear_module, PassTargets, Pattern};

/// A parsed and validated recipe, with the file it came from (for later error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The file name used in messages.
    pub path: PathBuf,
    /// The YAML text, kept to locate keys in errors found after parsing.
    pub text: String,
    pub output: OutputSpec,
    pub calibration: Option<CalibrationSpec>,
    pub stages: Vec<Stage>,
    /// Medusa heads to train against the written model.
    pub medusa: Option<MedusaSpec>,
    /// OneBit: 1-bit linears distilled from the model (instead of `stages`).
    pub onebit: Option<OneBitSpec>,
}

/// A recipe that cannot be used. The message starts with the file name, then the line (and
/// column) where known, then the key path.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: cannot read: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Syntax, unknown key, wrong type, bad value or inconsistent recipe.
    #[error("{path}: {}", describe(*line, *column, key.as_deref(), message))]
    Invalid {
        path: PathBuf,
        /// 1-based line, where known.
        line: Option<usize>,
        /// 1-based column, where known.
        column: Option<usize>,
        /// Key path (`stages[0].passes[1].gptq.bits`) for errors found after parsing; for
        /// parse errors serde_yaml puts it at the start of `message`.
        key: Option<String>,
        message: String,
    },
}

fn describe(line: Option<usize>, column: Option<usize>, key: Option<&str>, msg: &str) -> String {
    let mut s = String::new();
    match (line, column) {
        (Some(l), Some(c)) => s.push_str(&format!("line {l}, column {c}: ")),
        (Some(l), None) => s.push_str(&format!("line {l}: ")),
        _ => {}
    }
    if let Some(k) = key {
        s.push_str(k);
        s.push_str(": ");
    }
    s.push_str(msg);
    s
}

impl Recipe {
    /// Reads, parses and validates a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
            path: path.to_owned(),
            cause: source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates recipe text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RecipeError> {
        let doc: schema::RecipeDoc = serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location();
            let mut message = e.to_string();
            if let Some(l) = &loc {
                let suffix = format!(" at line {} column {}", l.line(), l.column());
                if let Some(stripped) = message.strip_suffix(&suffix) {
                    message = stripped.to_owned();
                }
            }
            RecipeError::Invalid {
                path: path.to_owned(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                key: None,
                message,
            }
        })?;
        let recipe = Recipe {
            path: path.to_owned(),
            text: text.to_owned(),
            output: doc.output,
            calibration: doc.calibration,
            stages: doc.stages,
            medusa: doc.medusa,
            onebit: doc.onebit,
        };
        recipe.validate()?;
        Ok(recipe)
    }

    /// Whether the recipe only converts (no passes).
    pub fn is_conversion(&self) -> bool {
        self.stages.is_empty() && self.onebit.is_none()
    }

    /// Every pass with its stage and pass index, in run order.
    pub fn passes(&self) -> impl Iterator<Item = (usize, usize, &Pass)> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.passes.iter().enumerate().map(move |(j, p)| (i, j, p)))
    }

    /// Cross-field checks the per-value parsing cannot do: a stage without passes, a pass
    /// whose scheme cannot be formed (no `scheme` and no `bits`), an empty `targets` list, a
    /// pass needing calibration data in a recipe without `calibration`.
    pub fn validate(&self) -> Result<(), RecipeError> {
        if let Some(o) = &self.onebit {
            let line = locate(&self.text, "onebit", Find::Key, 0);
            if !self.stages.is_empty() {
                return Err(self.error(
                    line,
                    "onebit".into(),
                    "`onebit` replaces every decoder linear itself: it cannot be combined \
                     with `stages` (remove one of them)"
                        .into(),
                ));
            }
            if o.steps > 0 && self.calibration.is_none() {
                return Err(self.error(
                    line,
                    "onebit.steps".into(),
                    "distillation needs training text: add a top-level `calibration: \
                     {source: …, num_samples: …, seqlen: …}` (or `steps: 0` for SVID alone)"
                        .into(),
                ));
            }
            if self.medusa.is_some() {
                return Err(self.error(
                    line,
                    "onebit".into(),
                    "Medusa heads on a OneBit model are not supported yet".into(),
                ));
            }
        }
        let mut seen = KeyCounter::default();
        for (i, stage) in self.stages.iter().enumerate() {
            let n = seen.next("passes");
            if stage.passes.is_empty() {
                return Err(self.error(
                    locate(&self.text, "passes", Find::Key, n),
                    format!("stages[{i}].passes"),
                    "a stage needs at least one pass".into(),
                ));
            }
        }
        for (i, j, pass) in self.passes() {
            let args = pass.args();
            let key = format!("stages[{i}].passes[{j}].{}", args.kind());
            let line = locate(&self.text, args.kind(), Find::Key, seen.next(args.kind()));
            match args.written_scheme() {
                Some(Err(msg)) => return Err(self.error(line, key, msg)),
                Some(Ok(s)) if args.int8_activations().is_some() && !s.is_w8a8_weights() => {
                    return Err(self.error(
                        line,
                        key,
                        format!(
                            "W8A8 multiplies int8 activations by int8 weights: the weights must \
                             stay 8-bit, symmetric, per channel (got {} bits, group {:?}, \
                             symmetric {})",
                            s.bits, s.group_size, s.symmetric
                        ),
                    ))
                }
                _ => {}
            }
            if args.input_activations().is_some() && args.int8_activations().is_none() {
                return Err(self.error(
                    line,
                    key,
                    "`input_activations` applies to `scheme: W8A8` only: other schemes leave \
                     the activations in float"
                        .into(),
                ));
            }
            if args.targets().is_empty() {
                return Err(self.error(
                    line,
                    format!("{key}.targets"),
                    "empty list: leave `targets` out to select every linear weight".into(),
                ));
            }
            if args.needs_calibration() && self.calibration.is_none() {
                return Err(self.error(
                    line,
                    key,
                    format!(
                        "`{}` needs calibration data: add a top-level `calibration: {{source: \
                         …}}` (hellaswag, mt-bench, a .txt or .jsonl:<field> file, or \
                         tokens:<file.i32>)",
                        args.kind()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Which linear weights each pass applies to, for a checkpoint with `tensor_names`.
    ///
    /// Candidates are the linear weights ([`linear_module`]); a pass takes those matched by
    /// any of its `targets` and by none of its `ignore` entries. Errors (naming the recipe
    /// file, the pass and the pattern): a `targets` entry that matches no linear weight
    /// (usually a typo, or a recipe written for another architecture); a pass left with no
    /// weights; a weight claimed by two weight-quantizing passes. An `ignore` entry that
    /// matches nothing is fine, so one recipe can say `ignore: [lm_head]` for models with
    /// and without a separate (untied) head.
    pub fn resolve_targets(
        &self,
        tensor_names: &[String],
    ) -> Result<Vec<PassTargets>, RecipeError> {
        let linear: Vec<(&str, &str)> = tensor_names
            .iter()
            .filter_map(|t| linear_module(t).map(|m| (m, t.as_str())))
            .collect();
        let mut kinds = KeyCounter::default();
        let mut patterns = KeyCounter::default();
        let mut claimed: HashMap<&str, String> = HashMap::new();
        let mut out = Vec::new();
        for (i, j, pass) in self.passes() {
            let args = pass.args();
            let key = format!("stages[{i}].passes[{j}].{}", args.kind());
            let pass_line = locate(&self.text, args.kind(), Find::Key, kinds.next(args.kind()));
            for (k, t) in args.targets().iter().enumerate() {
                let text = t.to_string();
                let line = locate(&self.text, &text, Find::Value, patterns.next(&text));
                if !linear.iter().any(|(m, n)| t.matches(m, n)) {
                    let example = linear
                        .first()
                        .map_or("none".to_owned(), |(_, n)| format!("e.g. `{n}`"));
                    return Err(self.error(
                        line.or(pass_line),
                        format!("{key}.targets[{k}]"),
                        format!(
                            "`{text}` matches none of the {} linear weights ({example})",
                            linear.len()
                        ),
                    ));
                }
            }
            for p in args.ignore() {
                let text = p.to_string();
                patterns.next(&text);
            }
            let tensors: Vec<&str> = linear
                .iter()
                .filter(|(m, n)| {
                    args.targets().iter().any(|t| t.matches(m, n))
                        && !args.ignore().iter().any(|p| p.matches(m, n))
                })
                .map(|&(_, n)| n)
                .collect();
            if tensors.is_empty() {
                return Err(self.error(
                    pass_line,
                    key,
                    "selects no weights: everything its `targets` match is in `ignore`".into(),
                ));
            }
            if args.weight_scheme().is_some() {
                for &t in &tensors {
                    if let Some(first) = claimed.insert(t, key.clone()) {
                        return Err(self.error(
                            pass_line,
                            key,
                            format!(
                                "`{t}` is already quantized by {first}: a weight can be \
                                 quantized by one pass only (use `ignore` in one of them)"
                            ),
                        ));
                    }
                }
            }
            out.push(PassTargets {
                stage: i,
                pass: j,
                kind: args.kind(),
                key,
                tensors: tensors.into_iter().map(str::to_owned).collect(),
            });
        }
        Ok(out)
    }

    fn error(&self, line: Option<usize>, key: String, message: String) -> RecipeError {
        RecipeError::Invalid {
            path: self.path.clone(),
            line,
            column: None,
            key: Some(key),
            message,
        }
    }
}

/// Counts occurrences of keys/values met so far in document order, to find the n-th
/// occurrence of one in the text.
#[derive(Default)]
struct KeyCounter(HashMap<String, usize>);

impl KeyCounter {
    /// The 0-based occurrence index of `key` this call stands for.
    fn next(&mut self, key: &str) -> usize {
        let n = self.0.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n - 1
    }
}

/// What [`locate`] looks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Find {
    /// A mapping key: the token followed by `:`.
    Key,
    /// A scalar value, bare or quoted, in block or flow style.
    Value,
}

/// The 1-based line of the `nth` (0-based) occurrence of `token` in the YAML text, comments
/// excluded. Occurrences must stand alone (delimited by whitespace, quotes, `[]{},:-` or the
/// line ends), so `lm_head` does not match inside `re:lm_head.*`. Parsed values carry no spans
/// in serde_yaml, so errors found after parsing use this; it is exact for recipes in block or
/// flow style, and returns `None` (no line in the message) for what it cannot find, such as a
/// value written with escapes.
pub fn locate(text: &str, token: &str, find: Find, nth: usize) -> Option<usize> {
    if token.is_empty() {
        return None;
    }
    // A value may be written double-quoted with escapes (`"re:a\\.b"` for `re:a\.b`).
    let mut needles = vec![token.to_owned()];
    if find == Find::Value {
        let escaped = token.replace('\\', "\\\\").replace('"', "\\\"");
        if escaped != token {
            needles.push(escaped);
        }
    }
    let mut seen = 0;
    for (ln, raw) in text.lines().enumerate() {
        let line = strip_comment(raw);
        let mut starts: Vec<usize> = needles
            .iter()
            .flat_map(|n| occurrences(line, n, find))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        for _ in starts {
            if seen == nth {
                return Some(ln + 1);
            }
            seen += 1;
        }
    }
    None
}

/// Start offsets of the stand-alone occurrences of `token` in `line`.
fn occurrences(line: &str, token: &str, find: Find) -> Vec<usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = line[from..].find(token) {
        let start = from + pos;
        let end = start + token.len();
        from = start + 1;
        let before_ok = line[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || "[{,\"'-".contains(c));
        let rest = &line[end..];
        let after_ok = match find {
            Find::Key => rest
                .trim_start_matches(['"', '\''])
                .trim_start()
                .starts_with(':'),
            Find::Value => rest
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || "]},\"'".contains(c)),
        };
        if before_ok && after_ok {
            out.push(start);
        }
    }
    out
}

/// The line without its comment (`#` at the start or after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_ws => return &line[..i],
            None => {}
        }
        prev_ws = c.is_whitespace();
    }
    line
}

#[cfg(test)]
mod tests;
