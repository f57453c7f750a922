//! `--ppl-style lm-eval` on WikiText-2 against lm-evaluation-harness 0.4.13 itself
//! (`evals/reference/wikitext/`, SmolLM2 through transformers): the article split, lm-eval's
//! detokenization, its word and byte counts and the token counts of all 62 articles, and the
//! rolling log-likelihood of the first article at the model's context (one window) and at
//! 512-token windows (three, the last with overlapping context).

use sha2::{Digest, Sha256};

use lmq_evals::rolling::{rolling_perplexity, rolling_windows};
use lmq_evals::text::wiki2_path;
use lmq_evals::wikitext::{detokenize, documents, split_articles};
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::Cpu;

/// lm-eval's log-likelihoods come from transformers in f32; a forward pass that matches
/// transformers agrees to about 1e-4 relative per window (`../shared/reference/README.md`).
const DOC_LL_REL_TOL: f64 = 1e-4;

fn reference() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("reference/wikitext/lmeval-wikitext-smollm2.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn articles_words_bytes_and_tokens_match_lm_eval() {
    let want = reference();
    let want_docs = want["docs"].as_array().unwrap();
    let text = std::fs::read_to_string(wiki2_path()).unwrap();
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let pages = split_articles(&text);
    let docs = documents(&text, &ckpt.tokenizer).unwrap();
    assert_eq!(pages.len(), want_docs.len(), "article count");
    for (i, ((page, doc), w)) in pages.iter().zip(&docs).zip(want_docs).enumerate() {
        let sha = hex::encode(Sha256::digest(detokenize(page).as_bytes()));
        assert_eq!(sha, w["detok_sha256"].as_str().unwrap(), "article {i} text");
        assert_eq!(
            doc.words as u64,
            w["words"].as_u64().unwrap(),
            "article {i} words"
        );
        assert_eq!(
            doc.bytes as u64,
            w["bytes"].as_u64().unwrap(),
            "article {i} bytes"
        );
        assert_eq!(
            doc.ids.len() as u64,
            w["tokens"].as_u64().unwrap(),
            "article {i} tokens"
        );
    }
}

#[test]
fn rolling_loglikelihood_of_the_first_article_matches_lm_eval() {
    let want = reference();
    let text = std::fs::read_to_string(wiki2_path()).unwrap();
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let model = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    let mut docs = documents(&text, &ckpt.tokenizer).unwrap();
    docs.truncate(1);
    let prefix = want["prefix_token_id"].as_u64().unwrap() as u32;
    assert_eq!(
        ckpt.tokenizer.bos_id(),
        Some(prefix),
        "lm-eval's prefix token"
    );
    for (len, key) in [
        (model.rope.max_positions(), "ll_model_context"),
        (512, "ll_512"),
    ] {
        let want_ll = want["docs"][0][key].as_f64().unwrap();
        let windows = rolling_windows(docs[0].ids.len(), len).len();
        let r = rolling_perplexity(&model, &docs, prefix, len, |_, _| {});
        let got = r.per_doc[0].loglikelihood;
        let rel = (got - want_ll).abs() / want_ll.abs();
        assert!(
            rel < DOC_LL_REL_TOL,
            "windows of {len} ({windows}): {got} vs lm-eval {want_ll} (rel {rel:.2e})"
        );
    }
}
