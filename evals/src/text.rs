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

/// Resolves `--ppl` values: `wiki2` (or `wikitext2`) or a path to any text file.
pub fn resolve(name: &str) -> PathBuf {
    match name {
        "wiki2" | "wikitext2" | "wikitext-2" => wiki2_path(),
        other => PathBuf::from(other),
    }
}
