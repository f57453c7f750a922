//! WikiText as lm-evaluation-harness's `wikitext` task sees it: the raw file cut into
//! articles (EleutherAI's `wikitext_document_level` rule), each article detokenized before
//! it is tokenized (lm-eval's `wikitext_detokenizer`), and words and bytes counted on the
//! article *before* detokenization (lm-eval's `process_results`). Word and byte perplexity
//! divide by those counts, so they must be counted exactly as lm-eval does to compare.

use std::sync::OnceLock;

use lmq_runtime::tokenizer::{Tokenizer, TokenizerError};
use regex::Regex;

use crate::rolling::Doc;

/// lm-eval's documents for a raw WikiText file: each article detokenized, then tokenized;
/// words and bytes counted on the raw article.
pub fn documents(text: &str, tokenizer: &Tokenizer) -> Result<Vec<Doc>, TokenizerError> {
    split_articles(text)
        .into_iter()
        .map(|page| {
            Ok(Doc {
                ids: tokenizer.encode(&detokenize(page), false)?,
                words: word_count(page),
                bytes: page.len(),
            })
        })
        .collect()
}

/// The articles of a raw WikiText file. The text is split on `\n`; a line that, once `= = =`
/// and `= =` are closed up and it is trimmed, starts with `= ` and ends with ` =` is a
/// level-1 heading and starts a new article. Article text is its lines joined by `\n`, so the
/// articles joined by `\n` give back the file, less any blank lines before the first heading
/// (WikiText starts with one), which are not an article of their own.
pub fn split_articles(text: &str) -> Vec<&str> {
    let mut articles = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split('\n') {
        if offset > start && is_article_heading(line) {
            let article = &text[start..offset - 1];
            if !article.trim().is_empty() {
                articles.push(article);
            }
            start = offset;
        }
        offset += line.len() + 1;
    }
    articles.push(&text[start..]);
    articles
}

/// Whether a raw line is a top-level `= Title =` heading (not `= = Section = =`).
fn is_article_heading(line: &str) -> bool {
    let closed = line.replace("= = =", "===").replace("= =", "==");
    let t = closed.trim();
    t.starts_with("= ") && t.ends_with(" =")
}

/// lm-eval's `wikitext_detokenizer`: undoes WikiText's tokenization (` @-@ `, spaced
/// punctuation, spaced brackets and quotes) so the model reads ordinary text. Rules applied
/// in lm-eval's order.
pub fn detokenize(page: &str) -> String {
    static RULES: OnceLock<[(Regex, &str); 6]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("valid detokenizer regex");
        [
            (re(r"/' [0-9]/"), "/'[0-9]/"),
            (re(r"\(\s*([^\)]*?)\s*\)"), "(${1})"),
            (re(r"\[\s*([^\]]*?)\s*\]"), "[${1}]"),
            (re(r"\{\s*([^}]*?)\s*\}"), "{${1}}"),
            (re(r#""\s*([^"]*?)\s*""#), "\"${1}\""),
            (re(r"'\s*([^']*?)\s*'"), "'${1}'"),
        ]
    });
    let mut s = page.replace("s '", "s'");
    s = rules[0].0.replace_all(&s, rules[0].1).into_owned();
    for (from, to) in [
        (" @-@ ", "-"),
        (" @,@ ", ","),
        (" @.@ ", "."),
        (" : ", ": "),
        (" ; ", "; "),
        (" . ", ". "),
        (" ! ", "! "),
        (" ? ", "? "),
        (" , ", ", "),
    ] {
        s = s.replace(from, to);
    }
    for (re, to) in &rules[1..] {
        s = re.replace_all(&s, *to).into_owned();
    }
    for (from, to) in [
        ("= = = =", "===="),
        ("= = =", "==="),
        ("= =", "=="),
        (" \u{b0} ", "\u{b0}"),
        (" \n", "\n"),
        ("\n ", "\n"),
        (" N ", " 1 "),
        (" 's", "'s"),
    ] {
        s = s.replace(from, to);
    }
    s
}

/// `len(re.split(r"\s+", page))` in Python: one more than the number of whitespace runs (a
/// leading or trailing run counts, as the empty strings it leaves are counted there).
pub fn word_count(page: &str) -> usize {
    let mut runs = 0;
    let mut in_space = false;
    for c in page.chars() {
        let space = is_python_space(c);
        if space && !in_space {
            runs += 1;
        }
        in_space = space;
    }
    runs + 1
}

/// Python's `str.isspace` (what `\s` matches in a `str` pattern): Unicode `White_Space` plus
/// the ASCII separators U+001C–U+001F, which Python counts and Rust's `is_whitespace` does not.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = " \n = Alpha = \n \n Alpha is a letter @-@ like thing , with ( parts ) . \n \n = = History = = \n \n It 's \" old \" . \n = Beta = \n \n Beta 's value is 1 @,@ 000 @.@ 5 . \n";

    #[test]
    fn articles_start_at_level_one_headings_and_rejoin_to_the_file() {
        let arts = split_articles(RAW);
        assert_eq!(arts.len(), 2);
        assert!(arts[0].starts_with(" = Alpha = "), "{:?}", arts[0]);
        assert!(
            arts[0].contains("= = History = ="),
            "sections stay in the article"
        );
        assert!(arts[1].starts_with(" = Beta = "));
        // The blank first line is dropped; everything after it rejoins exactly.
        assert_eq!(format!(" \n{}", arts.join("\n")), RAW);
    }

    #[test]
    fn detokenizer_applies_lm_evals_rules() {
        let arts = split_articles(RAW);
        let a = detokenize(arts[0]);
        assert!(a.contains("letter-like thing, with (parts)."), "{a:?}");
        assert!(a.contains("It's \"old\"."), "{a:?}");
        assert!(a.contains("== History =="), "{a:?}");
        let b = detokenize(arts[1]);
        assert!(b.contains("Beta's value is 1,000.5."), "{b:?}");
    }

    #[test]
    fn words_are_counted_like_python_re_split() {
        // re.split(r"\s+", s) on these in Python: 1, 1, 2, 3, 4 pieces.
        assert_eq!(word_count(""), 1);
        assert_eq!(word_count("a"), 1);
        assert_eq!(word_count("a b"), 2);
        assert_eq!(word_count(" a b"), 3);
        assert_eq!(word_count(" a  \n b \u{1f}"), 4);
    }
}
