//! MT-bench questions, split once: the first [`BENCHMARK_PER_CATEGORY`] of each category are
//! what `spec-bench` asks, the rest may teach Medusa heads what chat answers look like. One
//! split in one place keeps the heads from ever seeing a benchmark question.

use std::collections::BTreeMap;
use std::path::Path;

/// Questions per category the speculative benchmark keeps for itself (the first ones).
pub const BENCHMARK_PER_CATEGORY: usize = 2;

/// One MT-bench question: its category and its turns (the first is self-contained).
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub category: String,
    pub turns: Vec<String>,
}

/// Why the question file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MtBenchError {
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{path}, line {line}: {msg}")]
    Format {
        path: String,
        line: usize,
        msg: String,
    },
}

/// Every question of `question.jsonl`, in file order.
pub fn read(path: &Path) -> Result<Vec<Question>, MtBenchError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| MtBenchError::Io {
        path: p.clone(),
        cause: source,
    })?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| MtBenchError::Format {
            path: p.clone(),
            line: i + 1,
            msg,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let category = v["category"]
            .as_str()
            .ok_or_else(|| bad("no \"category\"".into()))?
            .to_owned();
        let turns: Vec<String> = v["turns"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if turns.is_empty() {
            return Err(bad("no \"turns\"".into()));
        }
        out.push(Question { category, turns });
    }
    Ok(out)
}

/// The first `per_category` questions of each category (by category name), and all the
/// others in file order.
pub fn split(
    questions: &[Question],
    per_category: usize,
) -> (BTreeMap<String, Vec<Question>>, Vec<Question>) {
    let mut kept: BTreeMap<String, Vec<Question>> = BTreeMap::new();
    let mut rest = vec![];
    for q in questions {
        let list = kept.entry(q.category.clone()).or_default();
        if list.len() < per_category {
            list.push(q.clone());
        } else {
            rest.push(q.clone());
        }
    }
    (kept, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_keeps_the_first_per_category_and_hands_out_the_rest() {
        let q = |c: &str, t: &str| Question {
            category: c.into(),
            turns: vec![t.into()],
        };
        let all = vec![
            q("a", "1"),
            q("b", "2"),
            q("a", "3"),
            q("a", "4"),
            q("b", "5"),
        ];
        let (kept, rest) = split(&all, 2);
        assert_eq!(kept["a"], vec![q("a", "1"), q("a", "3")]);
        assert_eq!(kept["b"], vec![q("b", "2"), q("b", "5")]);
        assert_eq!(rest, vec![q("a", "4")]);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("question.jsonl");
        std::fs::write(
            &f,
            "{\"category\": \"a\", \"turns\": [\"x\", \"y\"]}\n\n{\"turns\": []}\n",
        )
        .unwrap();
        let e = read(&f).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("category"), "{e}");
    }
}
