//! Speculative decoding on the real SmolLM2: greedy output is token-for-token plain greedy
//! decoding for prompt lookup and for draft models (a 10-layer early exit of the same model,
//! and the model itself, which must accept every proposal).

mod common;

use lmq_runtime::generate::generate;
use lmq_runtime::medusa::tree::SMALL_CHOICES;
use lmq_runtime::medusa::{
    generate_medusa, generate_medusa_on_device, generate_medusa_with, Acceptance, HeadProjection,
    MedusaChain, MedusaConfig, MedusaHeads, Tree, Typical,
};
use lmq_runtime::sampling::SamplingParams;
use lmq_runtime::speculative::cascade::Cascade;
use lmq_runtime::speculative::choose::{proposer_with, ProposerOptions, MEDUSA_MAX_GUESSES};
use lmq_runtime::speculative::draft::DraftModel;
use lmq_runtime::speculative::gate::Gates;
use lmq_runtime::speculative::lookup::PromptLookup;
use lmq_runtime::speculative::{generate_speculative, Proposer, SpecStats};

const PROMPTS: [&str; 20] = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "List the days of the week: Monday, Tuesday,",
    "Once upon a time, in a small village,",
    "Translate to French: Good morning, my friend.",
    "The three primary colors are",
    "Water boils at 100 degrees Celsius. At what temperature does water boil?",
    "Question: What is 12 times 12?\nAnswer:",
    "import numpy as np\nx = np.array([1, 2, 3])\nprint(",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Write a haiku about the ocean.",
    "In 1492, Columbus",
    "Summarize: The meeting was moved from Monday to Tuesday because the room was booked.",
    "Photosynthesis is the process by which",
    "for i in range(10):\n    print(i)\nfor j in range(10):\n    print(",
    "The largest planet in our solar system is",
    "Name three programming languages:",
    "A recipe for pancakes: flour, eggs,",
    "The opposite of hot is cold. The opposite of up is",
    "Dear Sir or Madam, I am writing to",
];

/// New tokens per prompt.
const NEW: usize = 16;
/// Proposed tokens per step.
const K: usize = 4;

use common::smollm2 as fixture;

/// Checks every prompt against plain greedy decoding; returns the summed statistics.
fn same_as_greedy(proposer: &mut dyn Proposer) -> SpecStats {
    let f = fixture();
    let stop = &f.ckpt.config.eos_token_ids;
    let mut total = SpecStats::default();
    for p in PROMPTS {
        let ids = f.ckpt.tokenizer.encode(p, true).unwrap();
        let plain = generate(&f.model, &ids, NEW, SamplingParams::default(), stop, |_| {}).unwrap();
        let (spec, s) = generate_speculative(
            &f.model,
            proposer,
            &ids,
            NEW,
            K,
            SamplingParams::default(),
            stop,
            |_| {},
        )
        .unwrap();
        assert_eq!(spec, plain, "prompt {p:?}");
        total += s;
    }
    total
}

/// Untrained Medusa heads (zero residual blocks: each repeats the model's next-token guess).
fn zero_heads(hidden_size: usize) -> MedusaHeads {
    MedusaHeads::zeros(MedusaConfig {
        num_heads: 4,
        num_layers: 1,
        hidden_size,
        token_input: false,
        recurrent: false,
    })
}

/// Token-aware heads whose `U` is `scale · I` plus small noise: each head's state leans
/// toward the embedding of the token chosen last, so what they guess depends on it.
fn token_aware_heads(hidden_size: usize, scale: f32) -> MedusaHeads {
    let mut heads = MedusaHeads::zeros(MedusaConfig {
        num_heads: 4,
        num_layers: 1,
        hidden_size,
        token_input: true,
        recurrent: false,
    });
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for (k, u) in heads.token_mix.iter_mut().enumerate() {
        for (i, w) in u.iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let diag = if i % (hidden_size + 1) == 0 {
                scale / (k + 1) as f32
            } else {
                0.0
            };
            *w = diag + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02;
        }
    }
    heads
}

/// A recurrent head (one token-aware head, iterated) leaning on the token it reads.
fn recurrent_head(hidden_size: usize) -> MedusaHeads {
    let aware = token_aware_heads(hidden_size, 0.5);
    let mut head = MedusaHeads::zeros(MedusaConfig {
        num_heads: 1,
        num_layers: 1,
        hidden_size,
        token_input: true,
        recurrent: true,
    });
    head.token_mix[0] = aware.token_mix[0].clone();
    head
}

#[test]
fn a_recurrent_head_chain_is_exactly_greedy_and_reads_its_own_guesses() {
    let f = fixture();
    let d = f.model.config.hidden_size;
    // Plain greedy whatever it guesses, and more than one guess a step (a recurrent head
    // is not capped by a head count).
    let s = same_as_greedy(&mut MedusaChain::new(f.model.clone(), recurrent_head(d)));
    assert!(s.proposed > s.steps, "{s:?}");
    // Each guess is the best token of the state after the previous guess was read.
    let heads = recurrent_head(d);
    let projection = HeadProjection::new(&f.model, &heads);
    let mut chain = MedusaChain::new(f.model.clone(), recurrent_head(d));
    let h: Vec<f32> = (0..d).map(|j| ((j * 7) % 17) as f32 * 0.1 - 0.8).collect();
    chain.observe_hidden(3, &h);
    let got: Vec<u32> = chain
        .propose(&[1, 2, 260], 4, &SamplingParams::default())
        .into_iter()
        .map(|p| p.0)
        .collect();
    let (mut state, mut token, mut want) = (h, 260u32, vec![]);
    for _ in 0..4 {
        state = heads.next_state(&state, &f.model.embed_tokens.rows(&[token]));
        token = projection.best_of_state(&f.model, &state).0;
        want.push(token);
    }
    assert_eq!(got, want);
}

#[test]
fn medusa_tree_decoding_is_exactly_greedy() {
    // Exactness holds whatever the heads guess: untrained (zero) heads, small tree, guesses
    // from a shortlist (the BPE's first 8192 ids; the chain test below scores the whole
    // vocabulary).
    let f = fixture();
    let c = &f.model.config;
    let mut heads = zero_heads(c.hidden_size);
    heads.vocab = Some((0..8192).collect());
    let tree = Tree::from_choices(SMALL_CHOICES, 4).unwrap();
    let mut total = SpecStats::default();
    for p in PROMPTS {
        let ids = f.ckpt.tokenizer.encode(p, true).unwrap();
        let plain = generate(
            &f.model,
            &ids,
            NEW,
            SamplingParams::default(),
            &c.eos_token_ids,
            |_| {},
        )
        .unwrap();
        let (out, s) =
            generate_medusa(&f.model, &heads, &tree, &ids, NEW, &c.eos_token_ids, |_| {}).unwrap();
        assert_eq!(out, plain, "prompt {p:?}");
        total += s;
    }
    // Zero heads guess "the next token repeats": right now and then (e.g. "the the").
    assert!(
        total.steps > 0 && total.generated >= total.steps,
        "{total:?}"
    );
}

#[test]
fn typical_acceptance_near_zero_temperature_is_greedy() {
    // At temperature 1e-4 the target's distributions are point masses on their argmax: the
    // bar accepts exactly the argmax and the draw returns it, so the output is greedy. At
    // temperature 1 it samples: same length budget, a different text for some prompt.
    let f = fixture();
    let c = &f.model.config;
    let heads = zero_heads(c.hidden_size);
    let tree = Tree::from_choices(SMALL_CHOICES, 4).unwrap();
    let typical = |temperature: f32| Acceptance::Typical {
        params: SamplingParams {
            temperature,
            seed: 7,
            ..SamplingParams::default()
        },
        typical: Typical::default(),
    };
    let mut differs = false;
    for p in &PROMPTS[..6] {
        let ids = f.ckpt.tokenizer.encode(p, true).unwrap();
        let stop = &c.eos_token_ids;
        let plain = generate(&f.model, &ids, NEW, SamplingParams::default(), stop, |_| {}).unwrap();
        let run = |a: &Acceptance| {
            generate_medusa_with(&f.model, &heads, &tree, a, &ids, NEW, stop, |_| {})
                .unwrap()
                .0
        };
        assert_eq!(run(&typical(1e-4)), plain, "prompt {p:?}");
        let sampled = run(&typical(1.0));
        assert!(!sampled.is_empty() && sampled.len() <= NEW);
        differs |= sampled != plain;
    }
    assert!(
        differs,
        "temperature 1 reproduced greedy text on every prompt"
    );
}

#[test]
fn medusa_chain_proposals_are_exactly_greedy() {
    // The chain proposer `generate` and `serve-local` use: untrained heads guess that the
    // next token repeats; the output must be plain greedy whatever they guess.
    let f = fixture();
    let heads = zero_heads(f.model.config.hidden_size);
    let s = same_as_greedy(&mut MedusaChain::new(f.model.clone(), heads));
    // Every step after a prompt's first gets the target's hidden state and proposes.
    assert!(s.proposed >= 2 * (s.steps - 2 * PROMPTS.len()), "{s:?}");
    eprintln!("medusa chain (zero heads): {s:?}");
    // Token-aware heads read the context's last token: still plain greedy, other guesses.
    let aware = token_aware_heads(f.model.config.hidden_size, 0.5);
    let a = same_as_greedy(&mut MedusaChain::new(f.model.clone(), aware));
    assert!(a.proposed >= 2 * (a.steps - 2 * PROMPTS.len()), "{a:?}");
    // The same state with another last token: other guesses (U leans on the token hard).
    let h = vec![0.05f32; f.model.config.hidden_size];
    let mut chain = MedusaChain::new(
        f.model.clone(),
        token_aware_heads(f.model.config.hidden_size, 4.0),
    );
    let mut guesses = |last: u32| -> Vec<u32> {
        chain.observe_hidden(3, &h);
        chain
            .propose(&[1, 2, last], 4, &SamplingParams::default())
            .into_iter()
            .map(|p| p.0)
            .collect()
    };
    let (g1, g2) = (guesses(1000), guesses(2000));
    assert_eq!(g1.len(), 4);
    assert_ne!(g1, g2, "the token the heads read changed no guess");
    // Guesses under a probability floor are not proposed, the first included: still plain
    // greedy, fewer rows verified, and the guesses kept are a prefix of the ungated ones.
    let gate = 0.3;
    let aware = || token_aware_heads(f.model.config.hidden_size, 0.5);
    let sure_only = Gates {
        guess_p_min: gate,
        ..Gates::default()
    };
    let gated =
        same_as_greedy(&mut MedusaChain::new(f.model.clone(), aware()).with_gates(sure_only));
    assert!(gated.proposed < a.proposed, "{gated:?} vs {a:?}");
    let mut all = MedusaChain::new(f.model.clone(), aware());
    let mut sure = MedusaChain::new(f.model.clone(), aware()).with_gates(sure_only);
    let mut cut = 0;
    for (i, last) in [13u32, 260, 1000, 4000, 20000].into_iter().enumerate() {
        let h: Vec<f32> = (0..f.model.config.hidden_size)
            .map(|j| ((i * 31 + j * 7) % 17) as f32 * 0.1 - 0.8)
            .collect();
        let ask = |c: &mut MedusaChain<_>| {
            c.observe_hidden(3, &h);
            c.propose(&[1, 2, last], 4, &SamplingParams::default())
        };
        let (every, kept) = (ask(&mut all), ask(&mut sure));
        assert_eq!(every[..kept.len()], kept[..], "last token {last}");
        cut += every.len() - kept.len();
    }
    eprintln!("gated chain: {gated:?}; {cut} of 20 direct guesses under {gate}");
}

#[test]
fn prompt_lookup_is_exactly_greedy() {
    let s = same_as_greedy(&mut PromptLookup::default());
    assert!(s.accepted > 0, "lookup never accepted anything: {s:?}");
    assert!(s.tau() > 1.0, "{s:?}");
}

#[test]
fn lookup_then_medusa_cascade_is_exactly_greedy_and_guesses_where_lookup_has_none() {
    let f = fixture();
    let long_matches = || PromptLookup {
        min_ngram: 2,
        max_ngram: 3,
    };
    let alone = same_as_greedy(&mut long_matches());
    let chain = MedusaChain::new(
        f.model.clone(),
        token_aware_heads(f.model.config.hidden_size, 0.5),
    );
    let both = same_as_greedy(&mut Cascade::new(vec![
        Box::new(long_matches()),
        Box::new(chain),
    ]));
    assert!(
        both.proposed > alone.proposed && both.steps < 20 * NEW,
        "the heads should fill the steps lookup leaves: {both:?} vs {alone:?}"
    );
    // The same cascade by name; members that cannot be parsed are named in the error.
    let opts = ProposerOptions::default();
    let dev = Default::default();
    let named = |spec: &str| proposer_with(spec, &opts, &f.model, &f.ckpt.path, &dev);
    let mut by_name = named("lookup:2+lookup@1").unwrap().unwrap();
    assert!(same_as_greedy(by_name.as_mut()).accepted > 0);
    for bad in [
        "lookup:0",
        "lookup+off",
        "lookup+nope",
        "lookup@0",
        "off@2",
        "lookup~0.3",
        "lookup@2~0.3",
        "medusa~1",
        "medusa~-0.1",
    ] {
        let err = named(bad).err().expect(bad).to_string();
        assert!(err.contains(bad) || err.contains("nope"), "{bad}: {err}");
    }
    // `medusa:DIR` by name: one guess a step, none under MEDUSA_GUESS_P_MIN, unless `@K`
    // and `~P` say otherwise.
    let dir = tempfile::tempdir().unwrap();
    token_aware_heads(f.model.config.hidden_size, 0.5)
        .save(dir.path())
        .unwrap();
    let heads_spec = format!("medusa:{}", dir.path().display());
    let default = same_as_greedy(named(&heads_spec).unwrap().unwrap().as_mut());
    assert!(
        MEDUSA_MAX_GUESSES == 1 && default.proposed <= default.steps,
        "{default:?}"
    );
    let explicit = same_as_greedy(
        named(&format!("{heads_spec}@3~0"))
            .unwrap()
            .unwrap()
            .as_mut(),
    );
    assert!(
        explicit.proposed > default.steps.max(default.proposed),
        "`@3~0` should propose several a step, ungated: {explicit:?} vs {default:?}"
    );
}

#[test]
fn early_exit_draft_is_exactly_greedy_with_and_without_p_min() {
    let mut draft = fixture().model.clone();
    draft.layers.truncate(10);
    let all = same_as_greedy(&mut DraftModel::new(draft.clone(), 0));
    assert!(
        all.accepted < all.proposed,
        "a 10-layer draft should miss sometimes: {all:?}"
    );
    assert!(all.accepted > 0, "{all:?}");
    // The same draft, stopping after a guess it gave under 0.5: still exactly greedy.
    let until_unsure = Gates {
        p_min: 0.5,
        ..Gates::default()
    };
    let sure = same_as_greedy(&mut DraftModel::new(draft, 0).with_gates(until_unsure));
    assert!(
        sure.proposed < all.proposed,
        "p_min 0.5 should cut some guesses: {sure:?} vs {all:?}"
    );
    assert!(
        sure.acceptance() > all.acceptance(),
        "the guesses kept should be the likelier ones: {sure:?} vs {all:?}"
    );
    // Proposing only guesses of probability 0.5 or more (`~0.5`, the doubtful first one
    // left out too): still exactly greedy, fewer rows than stopping after a doubtful one.
    let f = fixture();
    let opts = ProposerOptions {
        draft_p_min: 0.0,
        ..Default::default()
    };
    let mut gated = proposer_with(
        "early-exit:10~0.5",
        &opts,
        &f.model,
        &f.ckpt.path,
        &Default::default(),
    )
    .unwrap()
    .unwrap();
    let gated = same_as_greedy(gated.as_mut());
    assert!(
        gated.proposed < sure.proposed && gated.acceptance() > all.acceptance(),
        "{gated:?} vs {sure:?}"
    );
}

#[test]
fn the_model_as_its_own_draft_accepts_everything() {
    let s = same_as_greedy(&mut DraftModel::new(fixture().model.clone(), 0));
    assert_eq!(s.accepted, s.proposed, "{s:?}");
    assert!(s.tau() > 3.0, "k = {K}: {s:?}");
}

#[test]
fn device_resident_medusa_loop_is_exactly_greedy_and_agrees_with_the_host_loop() {
    // The loop the GPU takes (heads, top-k and argmax on the device, ids to the host), run
    // on the CPU backend. Random heads, so the guesses vary from step to step.
    let f = fixture();
    let c = &f.model.config;
    let mut heads = zero_heads(c.hidden_size);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for head in &mut heads.blocks {
        for b in head {
            for w in &mut b.weight {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *w = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02;
            }
        }
    }
    let tree = Tree::from_choices(SMALL_CHOICES, 4).unwrap();
    // The same blocks made token-aware: both loops must hand the heads the same token.
    let mut aware = token_aware_heads(c.hidden_size, 0.5);
    aware.blocks = heads.blocks.clone();
    let plain_heads = heads;
    let mut total = SpecStats::default();
    for (i, p) in PROMPTS[..6].iter().enumerate() {
        let mut heads = if i < 3 {
            plain_heads.clone()
        } else {
            aware.clone()
        };
        // Every other prompt with a shortlist: the heads' scores over 8192 gathered rows.
        heads.vocab = (i % 2 == 1).then(|| (0..8192).collect());
        let ids = f.ckpt.tokenizer.encode(p, true).unwrap();
        let plain = generate(
            &f.model,
            &ids,
            NEW,
            SamplingParams::default(),
            &c.eos_token_ids,
            |_| {},
        )
        .unwrap();
        let (host, hs) =
            generate_medusa(&f.model, &heads, &tree, &ids, NEW, &c.eos_token_ids, |_| {}).unwrap();
        let (dev, ds) =
            generate_medusa_on_device(&f.model, &heads, &tree, &ids, NEW, &c.eos_token_ids, |_| {})
                .unwrap();
        assert_eq!(dev, plain, "prompt {p:?}");
        assert_eq!(host, plain, "prompt {p:?}");
        // Same heads, same candidates (up to top-k ties), so the same acceptance.
        assert_eq!(ds.steps, hs.steps, "prompt {p:?}");
        total += ds;
    }
    assert!(total.steps > 0, "{total:?}");
}
