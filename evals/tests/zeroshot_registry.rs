//! The task registry and the metric arithmetic, without model or data: unknown names fail
//! with the list of known tasks (library and `evaluate` binary), and acc/acc_norm/stderr follow
//! lm-eval's `process_results` and `mean_stderr`.

use std::process::Command;

use lmq_evals::zeroshot::doc::{Doc, Request};
use lmq_evals::zeroshot::metrics::{aggregate, argmax, doc_outcome, mean_stderr};
use lmq_evals::zeroshot::{lookup, Scored, TaskKind, ZeroShotError, TASKS};

#[test]
fn unknown_task_lists_known_tasks() {
    let err = lookup("hellaswagg").unwrap_err();
    assert!(matches!(err, ZeroShotError::UnknownTask { .. }));
    let msg = err.to_string();
    assert!(msg.contains("unknown task `hellaswagg`"), "{msg}");
    for t in TASKS {
        assert!(msg.contains(t.name), "{} missing from {msg}", t.name);
    }
}

#[test]
fn evaluate_rejects_unknown_task_before_loading_the_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args(["--model", "/nonexistent.gguf", "--tasks", "piqa,nope"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("unknown task `nope`") && err.contains("arc_easy"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn evaluate_needs_ppl_or_tasks() {
    let out = Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args(["--model", "smollm2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("--ppl") && err.contains("--tasks"), "{err}");
}

#[test]
fn registry_names_are_lm_eval_names_and_unique() {
    let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "hellaswag",
            "piqa",
            "arc_easy",
            "arc_challenge",
            "winogrande",
            "boolq",
            "openbookqa",
            "sciq",
            "copa",
            "lambada_openai"
        ]
    );
}

#[test]
fn stderr_is_sample_stddev_over_sqrt_n() {
    // lm-eval: sqrt(Σ(x−μ)²/(n−1)) / sqrt(n). For [1,0,0,1]: μ=.5, var=1/3, se=sqrt(1/3)/2.
    let se = mean_stderr(&[1.0, 0.0, 0.0, 1.0]).unwrap();
    assert!((se - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
    assert_eq!(mean_stderr(&[1.0]), None);
}

#[test]
fn acc_norm_divides_by_choice_characters_and_argmax_takes_the_first() {
    assert_eq!(argmax(&[-1.0, -1.0, -2.0]), 0);
    let doc = Doc {
        requests: vec![Request::new("c", " ab"), Request::new("c", " abcdef")],
        choices: vec!["ab".into(), "abcdef".into()],
        gold: 1,
    };
    // ll −4 over 2 chars (−2/char) vs −9 over 6 chars (−1.5/char): acc picks 0, acc_norm 1.
    let s = [
        Scored {
            ll: -4.0,
            greedy: false,
        },
        Scored {
            ll: -9.0,
            greedy: false,
        },
    ];
    let kind = TaskKind::MultipleChoice { acc_norm: true };
    let o = doc_outcome(kind, &doc, &s);
    assert_eq!((o.acc, o.acc_norm), (0.0, 1.0));
    // Characters, not bytes: "é" counts once (Python `len`).
    let doc2 = Doc {
        choices: vec!["éé".into(), "abc".into()],
        ..doc.clone()
    };
    let s2 = [
        Scored {
            ll: -3.0,
            greedy: false,
        },
        Scored {
            ll: -4.0,
            greedy: false,
        },
    ];
    assert_eq!(doc_outcome(kind, &doc2, &s2).acc_norm, 1.0); // −1.5 vs −1.33
    let m = aggregate(kind, &[o, o]);
    assert_eq!(
        m.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["acc", "acc_norm"]
    );
    assert_eq!(m[0].stderr, Some(0.0));
}

#[test]
fn lambada_perplexity_is_exp_of_minus_mean_ll() {
    let doc = Doc {
        requests: vec![Request::new("a b", " c")],
        choices: vec![" c".into()],
        gold: 0,
    };
    let outs: Vec<_> = [(-1.0, true), (-3.0, false)]
        .iter()
        .map(|&(ll, greedy)| doc_outcome(TaskKind::Loglikelihood, &doc, &[Scored { ll, greedy }]))
        .collect();
    let m = aggregate(TaskKind::Loglikelihood, &outs);
    assert_eq!(m[0].name, "perplexity");
    assert!((m[0].value - 2f64.exp()).abs() < 1e-12);
    assert_eq!((m[1].name.as_str(), m[1].value), ("acc", 0.5));
}
