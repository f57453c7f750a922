//! The GGUF-built tokenizer against reference token ids: llama.cpp's tokenizer test vectors
//! (`models/ggml-vocab-*.gguf` with `.inp`/`.out`, generated with HF tokenizers), and the
//! SmolLM2 GGUF against the WikiText-2 token ids the perplexity reference was measured on.

use std::path::{Path, PathBuf};
use std::time::Instant;

use lmq_runtime::assets::{self, Asset};
use lmq_runtime::gguf::GgufFile;
use lmq_runtime::tokenizer::{GgufTokenizerSpec, Tokenizer};
use sha2::{Digest, Sha256};

/// Separator between inputs in llama.cpp's `.inp` files (see `tests/test-tokenizer-0.cpp`).
const SEP: &str = "\n__ggml_vocab_test__\n";

fn models_dir() -> PathBuf {
    let root = assets::ensure(Asset::LlamaCppSource).expect("llama-cpp-python source asset");
    root.join("vendor/llama.cpp/models")
}

fn smollm2() -> Tokenizer {
    let path = assets::ensure(Asset::SmolLm2).expect("SmolLM2 asset");
    load(&path)
}

fn load(gguf: &Path) -> Tokenizer {
    let g = GgufFile::open(gguf).unwrap_or_else(|e| panic!("{e}"));
    let spec = GgufTokenizerSpec::from_gguf(&g).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_spec(&spec).unwrap_or_else(|e| panic!("{e}"))
}

/// Reads `.inp`/`.out` exactly as `test-tokenizer-0.cpp` does: inputs split on the marker
/// (a trailing marker ends the last input), one line of space-separated ids per input.
fn read_vectors(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(format!("{}.inp", gguf.display())).expect("read .inp");
    let out = std::fs::read_to_string(format!("{}.out", gguf.display())).expect("read .out");
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(SEP) {
            Some(i) => {
                inputs.push(rest[..i].to_owned());
                rest = &rest[i + SEP.len()..];
            }
            None => {
                inputs.push(rest.to_owned());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("token id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{}: .inp/.out test counts differ",
        gguf.display()
    );
    inputs.into_iter().zip(outputs).collect()
}

/// Encodes every vector of `ggml-vocab-<name>.gguf` (no BOS, as the C++ test does) and asserts
/// they all match; returns how many there were.
fn check_vocab(name: &str) -> usize {
    let gguf = models_dir().join(format!("ggml-vocab-{name}.gguf"));
    let tok = load(&gguf);
    let vectors = read_vectors(&gguf);
    let mut failures = Vec::new();
    for (text, want) in &vectors {
        let got = tok.encode(text, false).unwrap();
        if &got != want {
            failures.push(format!("  {text:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    let passed = vectors.len() - failures.len();
    eprintln!(
        "ggml-vocab-{name}: {passed}/{} vectors match",
        vectors.len()
    );
    assert!(
        failures.is_empty(),
        "ggml-vocab-{name}: {} of {} vectors differ:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
    vectors.len()
}

#[test]
fn gpt2_vectors() {
    assert!(check_vocab("gpt-2") > 0);
}

#[test]
fn qwen2_vectors() {
    assert!(check_vocab("qwen2") > 0);
}

#[test]
fn llama_bpe_vectors() {
    assert!(check_vocab("llama-bpe") > 0);
}

/// StarCoder shares SmolLM2's pre-tokenizer (llama.cpp's STARCODER/SMOLLM regexes).
#[test]
fn starcoder_vectors() {
    assert!(check_vocab("starcoder") > 0);
}

/// Same pre-tokenizer family as StarCoder.
#[test]
fn refact_vectors() {
    assert!(check_vocab("refact") > 0);
}

/// Same pre-tokenizer family as StarCoder.
#[test]
fn command_r_vectors() {
    assert!(check_vocab("command-r") > 0);
}

/// GPT-2's pre-tokenizer on GPT-NeoX's vocabulary.
#[test]
fn mpt_vectors() {
    assert!(check_vocab("mpt") > 0);
}

#[test]
fn smollm2_prompt_and_chat_template() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.add_bos(), "SmolLM2's GGUF says add_bos_token = false");
    let template = tok.chat_template().expect("chat template");
    assert!(template.contains("<|im_start|>"), "{template}");

    let ids = tok.encode("The capital of France is", true).unwrap();
    let pieces: Vec<&str> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert_eq!(pieces, ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]);

    // Chat markup: the control tokens are single ids, and skipped by a special-free decode.
    let chat = "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n";
    let ids = tok.encode(chat, false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1);
    assert_eq!(tok.decode(&ids, false).unwrap(), chat);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi!\nassistant\n");
    assert_eq!(tok.token_to_piece(ids[0]).unwrap(), b"<|im_start|>");
}

#[test]
fn smollm2_round_trips() {
    let tok = smollm2();
    for text in [
        "Hello, world!",
        "  leading and trailing spaces  ",
        "line one\nline two\n\n\tindented\r\nwindows",
        "Ünïcödé: naïve café, 東京, Привет, مرحبا",
        "emoji 🦙🔥👩‍👩‍👧 and flags 🇫🇷",
        "numbers 3.14159 and 1,234,567 and 2024-01-01",
        "code: fn main() { println!(\"{}\", 1 + 2); }",
        "",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "ids {ids:?}");
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| tok.token_to_piece(i).unwrap())
            .collect();
        assert_eq!(bytes, text.as_bytes());
    }
}

/// The perplexity reference (`../shared/reference/README.md`) tokenized this file once, no BOS:
/// the ids must be exactly those or every perplexity comparison is off.
#[test]
fn smollm2_wiki2_ids_match_reference() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/wikitext-2-raw/wiki.test.raw");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok = smollm2();
    let t0 = Instant::now();
    let ids = tok.encode(&text, false).unwrap();
    eprintln!(
        "wiki2: {} bytes -> {} tokens in {:.2?}",
        text.len(),
        ids.len(),
        t0.elapsed()
    );
    let mut h = Sha256::new();
    for id in &ids {
        h.update((*id as i32).to_le_bytes());
    }
    let hash = hex::encode(h.finalize());
    assert_eq!(ids.len(), 301_948, "token count (sha256 {hash})");
    assert_eq!(
        hash,
        "ec139e0280beb6979654b249d4853308aef69c8eb49721c308382e6d76fbd214"
    );
}
