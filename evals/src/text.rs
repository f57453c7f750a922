//! Named evaluation texts, so `--ppl wiki2` works without users knowing where the file is.

use std::path::{Path, PathBuf};

/// The WikiText-2 raw test file shipped in `../shared/data` next to the checkout, or
/// `$LMQ_WIKI2` when set.
pub fn wiki2_path() -> PathBuf {
    if let Ok(p) = std::env::var("LMQ_WIKI2") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("../shared/data/wikitext-2-raw/wiki.test.raw")
}

/// Whether a `--ppl` name is the WikiText-2 alias (its articles are then lm-eval's documents).
pub fn is_wiki2(name: &str) -> bool {
    matches!(name, "wiki2" | "wikitext2" | "wikitext-2")
}

/// Resolves `--ppl` values: `wiki2` (or `wikitext2`) or a path to any text file.
pub fn resolve(name: &str) -> PathBuf {
    if is_wiki2(name) {
        wiki2_path()
    } else {
        PathBuf::from(name)
    }
}
