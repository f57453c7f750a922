//! Stop sequences over streamed text: text may only be sent once no stop sequence can still
//! begin inside it, so a client never sees the first half of a stop string.

/// Where the text stands against the stop sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// A stop sequence starts at this byte: the output ends there.
    Stopped(usize),
    /// No stop sequence yet; bytes before this one can be sent.
    SafeUpTo(usize),
}

/// Scans `text` for the earliest stop sequence. Without one, the safe length excludes the
/// longest suffix of `text` that is a proper prefix of some stop sequence.
pub fn scan(text: &str, stops: &[String]) -> Scan {
    let first = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    if let Some(at) = first {
        return Scan::Stopped(at);
    }
    let mut safe = text.len();
    for s in stops {
        for (k, _) in s.char_indices().skip(1) {
            let prefix = &s[..k];
            if text.ends_with(prefix) {
                safe = safe.min(text.len() - prefix.len());
            }
        }
    }
    Scan::SafeUpTo(safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn finds_earliest_stop_and_holds_back_prefixes() {
        let stops = v(&["\n\n", "END"]);
        assert_eq!(scan("one\n\ntwo END", &stops), Scan::Stopped(3));
        assert_eq!(scan("abc EN", &stops), Scan::SafeUpTo(4));
        assert_eq!(scan("abc E", &stops), Scan::SafeUpTo(4));
        assert_eq!(scan("abc\n", &stops), Scan::SafeUpTo(3));
        assert_eq!(scan("abc", &stops), Scan::SafeUpTo(3));
        assert_eq!(scan("abc", &[]), Scan::SafeUpTo(3));
        // Multi-byte stop strings are cut at character boundaries.
        assert_eq!(scan("x é", &v(&["éa"])), Scan::SafeUpTo(2));
    }
}
