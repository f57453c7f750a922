//! Tokenizer from GGUF metadata (being written).
