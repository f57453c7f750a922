//! The shared-prefix scorer against scoring each context + continuation on its own, on the
//! real SmolLM2 and a handful of requests of each shape the tasks produce: one context with
//! several continuations (HellaSwag/PIQA/ARC), one-token continuations (BoolQ's " yes"/" no"),
//! and two contexts that differ at the end with one continuation (Winogrande).

use lmq_evals::zeroshot::encode::{encode_pair, Encoded};
use lmq_evals::zeroshot::{Scored, Scorer, Sharing};
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::Cpu;

/// Both paths compute the same math; only the attention kernels differ (burn's blocked
/// attention for a fresh sequence, the cached kernel on top of the prefix), so sums of f32
/// log-softmaxes over a few tokens agree to float rounding. 2e-3 nats absolute on
/// log-likelihoods of size 1–60 (observed differences: ~1e-5) leaves room for that and would still catch an off-by-one
/// position (which changes a log-likelihood by whole nats).
const LL_ABS_TOL: f64 = 2e-3;

fn questions() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![
            (
                "Question: How do I boil an egg?\nAnswer:",
                " Put it in boiling water for ten minutes.",
            ),
            (
                "Question: How do I boil an egg?\nAnswer:",
                " Put it in the freezer overnight.",
            ),
            (
                "Question: How do I boil an egg?\nAnswer:",
                " Paint it blue.",
            ),
        ],
        vec![
            (
                "The sky is blue.\nQuestion: is the sky blue?\nAnswer:",
                " no",
            ),
            (
                "The sky is blue.\nQuestion: is the sky blue?\nAnswer:",
                " yes",
            ),
        ],
        vec![
            (
                "The trophy doesn't fit into the suitcase because the trophy",
                " is too large.",
            ),
            (
                "The trophy doesn't fit into the suitcase because the suitcase",
                " is too large.",
            ),
        ],
    ]
}

fn score(sharing: Sharing, batch: usize, enc: &[Vec<Encoded>]) -> Vec<Vec<Scored>> {
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let model = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    let mut scorer = Scorer::new(&model, sharing, batch);
    scorer.score_docs(enc)
}

#[test]
fn shared_prefix_matches_separate_scoring() {
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let enc: Vec<Vec<Encoded>> = questions()
        .iter()
        .map(|q| {
            q.iter()
                .map(|(c, x)| encode_pair(&ckpt.tokenizer, c, x).unwrap())
                .collect()
        })
        .collect();
    let shared = score(Sharing::Prefix, 1, &enc);
    let separate = score(Sharing::Separate, 1, &enc);
    let batched = score(Sharing::Separate, 3, &enc);
    for (q, ((a, b), c)) in shared.iter().zip(&separate).zip(&batched).enumerate() {
        for (i, ((a, b), c)) in a.iter().zip(b).zip(c).enumerate() {
            eprintln!(
                "q{q} r{i}: prefix {:.6} separate {:.6} batched {:.6}",
                a.ll, b.ll, c.ll
            );
            assert!(a.ll < 0.0 && a.ll.is_finite());
            assert!(
                (a.ll - b.ll).abs() < LL_ABS_TOL,
                "q{q} r{i}: {a:?} vs {b:?}"
            );
            assert!(
                (c.ll - b.ll).abs() < LL_ABS_TOL,
                "q{q} r{i}: batched {c:?} vs {b:?}"
            );
            assert_eq!(a.greedy, b.greedy);
        }
    }
}

#[test]
fn encode_pair_moves_trailing_space_and_splits_the_whole_encoding() {
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let tok = &ckpt.tokenizer;
    // lm-eval's `_encode_pair`: "Answer: " + "yes" is scored as "Answer:" + " yes".
    let a = encode_pair(tok, "Question: is it?\nAnswer: ", "yes").unwrap();
    let b = encode_pair(tok, "Question: is it?\nAnswer:", " yes").unwrap();
    assert_eq!(a, b);
    let whole = tok.encode("Question: is it?\nAnswer: yes", false).unwrap();
    assert_eq!([a.context.clone(), a.continuation.clone()].concat(), whole);
    assert_eq!(a.continuation, tok.encode(" yes", false).unwrap());
}
