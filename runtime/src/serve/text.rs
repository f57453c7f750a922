//! Generated token ids to text as they arrive: whole characters only (a token may end in the
//! middle of a UTF-8 sequence), cut at the first stop sequence.

use super::stop::{scan, Scan};
use crate::tokenizer::Tokenizer;

/// The text of one generation so far and how much of it has been handed out.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    stops: Vec<String>,
    ids: Vec<u32>,
    text: String,
    sent: usize,
    stopped: bool,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer, stops: Vec<String>) -> Self {
        Self {
            tokenizer,
            stops,
            ids: vec![],
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds a token and returns the text that became safe to send (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        if self.stopped {
            return String::new();
        }
        self.ids.push(id);
        let full = self.tokenizer.decode(&self.ids, true).unwrap_or_default();
        if full.ends_with('\u{fffd}') {
            return String::new(); // the rest of the character comes with the next token
        }
        self.text = full;
        match scan(&self.text, &self.stops) {
            Scan::Stopped(at) => {
                self.stopped = true;
                self.text.truncate(at.max(self.sent));
                self.take(self.text.len())
            }
            Scan::SafeUpTo(n) => self.take(n),
        }
    }

    /// Everything not yet sent (the generation ended without a stop sequence).
    pub fn finish(&mut self) -> String {
        if !self.stopped {
            if let Ok(full) = self.tokenizer.decode(&self.ids, true) {
                if full.len() >= self.sent && full.is_char_boundary(self.sent) {
                    self.text = full;
                }
            }
        }
        self.take(self.text.len())
    }

    fn take(&mut self, upto: usize) -> String {
        if upto <= self.sent || !self.text.is_char_boundary(upto) {
            return String::new();
        }
        let s = self.text[self.sent..upto].to_owned();
        self.sent = upto;
        s
    }

    /// Whether a stop sequence ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}
