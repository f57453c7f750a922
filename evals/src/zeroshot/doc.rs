//! One evaluation question in the form lm-eval's `construct_requests` gives it, so that every
//! task reduces to the same scoring loop.

/// A `(context, continuation)` pair: the log-likelihood of `continuation` given `context` is
/// what gets scored. The continuation already carries lm-eval's target delimiter (`" "`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

impl Request {
    /// A request from its two strings.
    pub fn new(context: impl Into<String>, continuation: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            continuation: continuation.into(),
        }
    }
}

/// One question: its requests (one per choice; LAMBADA has one), the strings lm-eval's
/// `doc_to_choice` returns (their character lengths normalize `acc_norm`), and the gold index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub requests: Vec<Request>,
    /// `doc_to_choice(doc)`: for Winogrande the option-substituted contexts, for COPA the
    /// choices with their leading space, otherwise the answer strings without the delimiter.
    pub choices: Vec<String>,
    pub gold: usize,
}
