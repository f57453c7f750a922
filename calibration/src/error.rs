//! The one error type of this crate: every variant names the file (and, where it applies, the
//! field, line or row) so that a failing recipe can be fixed without a debugger.

use std::path::PathBuf;

/// Why calibration data (or an eval dataset) could not be read or sampled.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Arrow IPC data is malformed or unreadable (message of the Arrow reader).
    #[error("{}: reading Arrow IPC data: {message}", path.display())]
    Arrow { path: PathBuf, message: String },
    /// A dataset directory holds no `.arrow` files (neither listed in `state.json` nor found).
    #[error("{}: no .arrow data files in this directory", dir.display())]
    NoArrowFiles { dir: PathBuf },
    /// A dataset's `state.json` is not what `datasets.save_to_disk` writes.
    #[error("{}: invalid state.json: {message}", path.display())]
    StateJson { path: PathBuf, message: String },
    /// The requested column does not exist.
    #[error("{}: no field `{field}` (columns: {})", path.display(), available.join(", "))]
    MissingField {
        path: PathBuf,
        field: String,
        available: Vec<String>,
    },
    /// A column has a type the caller cannot use (e.g. a string was required).
    #[error("{}: field `{field}` has type {data_type}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        field: String,
        data_type: String,
        expected: &'static str,
    },
    /// A column has an Arrow type this reader does not convert to JSON.
    #[error("{}: field `{field}` has unsupported Arrow type {data_type}", path.display())]
    UnsupportedType {
        path: PathBuf,
        field: String,
        data_type: String,
    },
    /// A value that must be present is null.
    #[error("{}: field `{field}` is null in row {row}", path.display())]
    NullValue {
        path: PathBuf,
        field: String,
        row: usize,
    },
    /// A JSON Lines file has a bad line (invalid JSON, missing field, wrong type).
    #[error("{}:{line}: {message}", path.display())]
    Jsonl {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        message: String,
    },
    /// A pre-tokenized file's length is not a whole number of `seqlen`-token int32 rows.
    #[error(
        "{}: {len} bytes is not a multiple of 4 × seqlen ({seqlen}): expected raw little-endian \
         int32 rows of {seqlen} tokens",
        path.display()
    )]
    TokensShape {
        path: PathBuf,
        len: u64,
        seqlen: usize,
    },
    /// A pre-tokenized file has fewer rows than samples were asked for.
    #[error("{}: has {rows} rows of {seqlen} tokens, but {wanted} samples were asked for", path.display())]
    TooFewRows {
        path: PathBuf,
        rows: usize,
        seqlen: usize,
        wanted: usize,
    },
    /// A pre-tokenized file holds a negative token id.
    #[error("{}: negative token id {value} at token {index}", path.display())]
    NegativeToken {
        path: PathBuf,
        index: usize,
        value: i32,
    },
    /// The source has too few tokens to cut even one window of one token plus its target.
    #[error(
        "{source_desc}: only {n_tokens} tokens; at least 2 are needed for a calibration window"
    )]
    TooFewTokens {
        source_desc: String,
        n_tokens: usize,
    },
    /// A parameter is out of range (zero samples, zero seqlen, a range too large to sample).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] lmq_runtime::tokenizer::TokenizerError),
    /// A cached dataset asset could not be fetched.
    #[error(transparent)]
    Asset(#[from] lmq_runtime::assets::AssetError),
}

impl CalibrationError {
    /// An [`CalibrationError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
