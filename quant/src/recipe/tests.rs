use super::*;
use crate::scheme::QuantScheme;

fn parse(text: &str) -> Result<Recipe, RecipeError> {
    Recipe::parse(text, Path::new("recipes/r.yaml"))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(r) => panic!("expected an error, parsed {r:?}"),
        Err(e) => e.to_string(),
    }
}

/// The Hessian options of a one-pass recipe `gptq: {ARGS}`.
fn hessian_options_of(args: &str) -> crate::pipeline::hessian::HessianOptions {
    let r = parse(&format!(
        "calibration: {{source: notes.txt}}\nstages:\n  - passes:\n      - gptq: {{{args}}}\n"
    ))
    .unwrap();
    let Pass::Gptq(g) = &r.stages[0].passes[0] else {
        panic!("not a gptq pass")
    };
    g.hessian_options()
}

/// Asserts the message has the file first, then every fragment.
fn assert_msg(msg: &str, fragments: &[&str]) {
    assert!(msg.starts_with("recipes/r.yaml: "), "{msg}");
    for f in fragments {
        assert!(msg.contains(f), "`{f}` missing from: {msg}");
    }
}

/// SmolLM2-135M's tensor names as the runtime's weight sources list them (30 layers; the
/// separate lm_head that a GGUF `output.weight` maps to included).
fn smollm2_names() -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_owned()];
    for l in 0..30 {
        for m in lmq_runtime::config::DECODER_LINEARS {
            names.push(format!("model.layers.{l}.{m}.weight"));
        }
        names.push(format!("model.layers.{l}.input_layernorm.weight"));
        names.push(format!("model.layers.{l}.post_attention_layernorm.weight"));
    }
    names.push("model.norm.weight".to_owned());
    names.push("lm_head.weight".to_owned());
    names
}

const GPTQ: &str = "\
calibration: {source: hellaswag}
stages:
  - name: quantize
    passes:
      - gptq:
          scheme: W4A16
          bits: 4
";

#[test]
fn every_recipe_in_the_repo_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut n = 0;
    let names = smollm2_names();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let r = Recipe::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
            // Every quantization pass selects SmolLM2's 210 linears with lm_head ignored, or
            // lm_head alone (a recipe that quantizes the vocabulary projection separately).
            let resolved = r.resolve_targets(&names).unwrap_or_else(|e| panic!("{e}"));
            for t in &resolved {
                assert!(
                    t.tensors.len() == 210 || t.tensors == ["lm_head.weight"],
                    "{}: {} selects {} weights",
                    p.display(),
                    t.key,
                    t.tensors.len()
                );
            }
            assert!(
                std::fs::read_to_string(&p).unwrap().starts_with('#'),
                "{}: recipes start with a comment saying what they are for",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n >= 10, "expected recipes in {}", dir.display());
}

#[test]
fn shipped_recipes_mean_what_their_names_say() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let scheme = |f: &str| {
        let r = Recipe::from_file(&dir.join(f)).unwrap();
        r.stages[0].passes[0]
            .args()
            .weight_scheme()
            .unwrap()
            .unwrap()
    };
    let s = |bits, group_size, symmetric| QuantScheme {
        bits,
        group_size,
        symmetric,
    };
    assert_eq!(scheme("rtn-w4g128.yaml"), s(4, Some(128), true));
    assert_eq!(scheme("rtn-w4g64.yaml"), s(4, Some(64), true));
    assert_eq!(scheme("gptq-w4g128.yaml"), s(4, Some(128), true));
    assert_eq!(scheme("gptq-w3g128.yaml"), s(3, Some(128), true));
    assert_eq!(scheme("gptq-w8.yaml"), s(8, None, true));
    assert_eq!(scheme("gptq-w2g64.yaml"), s(2, Some(64), true));
    assert_eq!(scheme("gptq-w4g64.yaml"), s(4, Some(64), true));

    // AWQ recipes: the awq pass first, its quantizing pass second.
    for (f, want) in [
        ("awq-w4.yaml", s(4, Some(64), false)),
        ("awq-w4g128.yaml", s(4, Some(128), false)),
        ("awq-w3.yaml", s(3, Some(64), false)),
        ("awq-w3g128.yaml", s(3, Some(128), false)),
        ("awq-gptq-w4.yaml", s(4, Some(64), false)),
        ("awq-gptq-w4g128.yaml", s(4, Some(128), false)),
    ] {
        let r = Recipe::from_file(&dir.join(f)).unwrap();
        let passes = &r.stages[0].passes;
        let Pass::Awq(a) = &passes[0] else {
            panic!("{f}: first pass is not awq")
        };
        let defaults = crate::awq::AwqOptions::default();
        // The g128 recipes carry the settings measured best on Qwen2.5 (README).
        let expected = if f.ends_with("g128.yaml") {
            crate::awq::AwqOptions {
                clip: false,
                sink_tokens: 1,
                float_inputs: true,
                ..defaults
            }
        } else {
            defaults
        };
        assert_eq!(a.options(), expected, "{f}");
        assert_eq!(
            passes[1].args().weight_scheme().unwrap().unwrap(),
            want,
            "{f}"
        );
        assert_eq!(
            passes[1].kind(),
            if f.contains("gptq") { "gptq" } else { "rtn" }
        );
    }

    let r = Recipe::from_file(&dir.join("gptq-w4g64-llmcompressor.yaml")).unwrap();
    let Pass::Gptq(g) = &r.stages[0].passes[0] else {
        panic!("not gptq")
    };
    let o = g.options().unwrap();
    assert_eq!(o.scheme, s(4, Some(64), true));
    assert!(o.act_order && o.static_groups);
    assert_eq!((o.dampening, o.block_size), (0.01, 128));
    let c = r.calibration.as_ref().unwrap();
    assert_eq!(
        c.source,
        CalibrationSource::Tokens(
            "../shared/reference/calib-smollm2-hellaswag-128x512-seed0.i32".into()
        )
    );
    assert_eq!((c.num_samples.0, c.seqlen.0, c.seed), (128, 512, 0));
}

#[test]
fn conversion_recipes_have_no_passes() {
    let r = parse("output:\n  dtype: bf16\nstages: []\n").unwrap();
    assert!(r.is_conversion());
    assert_eq!(r.output.dtype, FloatDtype::Bf16);
    assert!(parse("{}").unwrap().is_conversion());
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let msg = err("output:\n  dtype: f32\n  dtyp: bf16\n");
    assert_msg(&msg, &["line 3", "dtyp", "output"]);

    let mut text = GPTQ.to_owned();
    text.push_str("          act_ordr: true\n");
    let msg = err(&text);
    assert_msg(&msg, &["line 8", "stages[0].passes[0].gptq", "act_ordr"]);

    let msg = err("calibration: {source: hellaswag, samples: 4}\n");
    assert_msg(&msg, &["line 1", "calibration", "samples"]);

    let msg = err("stages:\n  - passes:\n      - awx: {bits: 4}\n");
    assert_msg(
        &msg,
        &[
            "line 3",
            "stages[0].passes[0]",
            "unknown pass `awx`",
            "rtn, gptq, awq",
        ],
    );
}

#[test]
fn wrong_type_names_file_line_and_key() {
    let msg = err(&GPTQ.replace("bits: 4", "bits: four"));
    assert_msg(
        &msg,
        &[
            "line 7",
            "stages[0].passes[0].gptq.bits",
            "four",
            "2, 3, 4, 8",
        ],
    );
    let msg = err(&GPTQ.replace("bits: 4", "act_order: yes please"));
    assert_msg(&msg, &["line 7", "stages[0].passes[0].gptq.act_order"]);
    let msg = err("output:\n  dtype: f8\n");
    assert_msg(&msg, &["line 2", "output.dtype", "f8"]);
}

#[test]
fn unsupported_bits_name_key_path_and_allowed_values() {
    let msg = err(&GPTQ.replace("bits: 4", "bits: 5"));
    assert_msg(
        &msg,
        &[
            "line 7",
            "stages[0].passes[0].gptq.bits",
            "unsupported bit width 5",
            "allowed values are 2, 3, 4, 8",
        ],
    );
    let msg = err(&GPTQ.replace("bits: 4", "bits: -1"));
    assert!(msg.contains("`-1`") && msg.contains("2, 3, 4, 8"), "{msg}");
}

#[test]
fn unknown_scheme_lists_the_known_ones() {
    let msg = err(&GPTQ.replace("W4A16", "W5A16"));
    assert_msg(
        &msg,
        &[
            "line 6",
            "stages[0].passes[0].gptq.scheme",
            "unknown scheme `W5A16`",
            "W4A16, W4A16_ASYM, W8A16",
        ],
    );
}

#[test]
fn other_bad_values_are_located() {
    let msg = err(&GPTQ.replace("bits: 4", "group_size: 0"));
    assert_msg(&msg, &["line 7", "gptq.group_size", "group size 0"]);
    let msg = err(&GPTQ.replace("bits: 4", "dampening: -0.1"));
    assert_msg(&msg, &["line 7", "gptq.dampening"]);
    let msg = err(&GPTQ.replace("bits: 4", "block_size: 0"));
    assert_msg(&msg, &["line 7", "gptq.block_size"]);
    let msg = err(&GPTQ.replace("bits: 4", "token_clip: 0.5"));
    assert_msg(
        &msg,
        &["line 7", "gptq.token_clip", "null to turn clipping off"],
    );
    let msg = err(&GPTQ.replace("bits: 4", "window_starts: {positions: 4, seqlen: 512}"));
    assert_msg(
        &msg,
        &["line 7", "gptq.window_starts", "unknown field `seqlen`"],
    );
    let msg = err(&GPTQ.replace("bits: 4", "window_starts: {positions: 0}"));
    assert_msg(
        &msg,
        &["line 7", "gptq.window_starts.positions", "positive"],
    );
    let awq = GPTQ
        .replace("gptq:", "awq:")
        .replace("bits: 4", "max_shrink: 1.5");
    let msg = err(&awq);
    assert_msg(&msg, &["line 7", "awq.max_shrink", "(0, 1)"]);
    let msg = err(&GPTQ.replace("gptq:", "awq:").replace("bits: 4", "grid: 0"));
    assert_msg(&msg, &["line 7", "awq.grid", "positive"]);
    let msg = err(&GPTQ
        .replace("gptq:", "awq:")
        .replace("bits: 4", "dampening: 0.1"));
    assert_msg(&msg, &["line 7", "unknown field `dampening`"]);
    let msg = err(&GPTQ.replace("hellaswag", "wiki.jsonl"));
    assert_msg(&msg, &["line 1", "calibration.source", "wiki.jsonl:text"]);
    let msg = err(&GPTQ.replace("hellaswag", "../shared/data/wikitext-2-raw/wiki.test.raw"));
    assert_msg(
        &msg,
        &["calibration.source", "never be the evaluation text"],
    );
    let msg = err(&GPTQ.replace("hellaswag", "c4"));
    assert_msg(
        &msg,
        &["unknown calibration source `c4`", "tokens:<file.i32>"],
    );
}

#[test]
fn invalid_regex_is_an_error_at_its_line() {
    let mut text = GPTQ.to_owned();
    text.push_str("          targets: [\"re:model.layers.(0|1\"]\n");
    let msg = err(&text);
    assert_msg(
        &msg,
        &[
            "line 8",
            "stages[0].passes[0].gptq.targets[0]",
            "invalid regular expression `re:model.layers.(0|1`: unclosed group",
        ],
    );
}

#[test]
fn cross_field_errors_name_key_path_and_line() {
    // A pass needing calibration in a recipe without it.
    let msg = err(&GPTQ.replace("calibration: {source: hellaswag}\n", ""));
    assert_msg(
        &msg,
        &[
            "line 4",
            "stages[0].passes[0].gptq",
            "needs calibration data",
        ],
    );
    // No scheme and no bits.
    let msg = err("stages:\n  - passes:\n      - rtn: {group_size: 64}\n");
    assert_msg(&msg, &["line 3", "stages[0].passes[0].rtn", "`bits`"]);
    // Empty stage, empty targets.
    let msg = err("stages:\n  - name: a\n    passes: []\n");
    assert_msg(&msg, &["line 3", "stages[0].passes", "at least one pass"]);
    let msg = err("stages:\n  - passes:\n      - rtn: {bits: 4, targets: []}\n");
    assert_msg(
        &msg,
        &["line 3", "stages[0].passes[0].rtn.targets", "empty"],
    );
}

#[test]
fn explicit_fields_override_the_scheme() {
    let r = parse(
        "calibration: {source: notes.txt, num_samples: 16, seqlen: 512, seed: 3}\n\
         stages:\n  - passes:\n      - gptq: {scheme: W4A16, group_size: 64, symmetric: false, \
         bits: 3, act_order: true, dampening: 0.1, block_size: 64}\n      \
         - rtn: {scheme: w4a16_asym, group_size: channel, targets: [lm_head]}\n      \
         - rtn: {bits: 8, targets: [model.embed_tokens.weight]}\n",
    )
    .unwrap();
    let Pass::Gptq(g) = &r.stages[0].passes[0] else {
        panic!()
    };
    let o = g.options().unwrap();
    assert_eq!(
        o.scheme,
        QuantScheme {
            bits: 3,
            group_size: Some(64),
            symmetric: false
        }
    );
    assert!(o.act_order && !o.static_groups);
    assert_eq!((o.dampening, o.block_size), (0.1, 64));
    assert_eq!(g.hessian_options().token_clip, Some(3.0), "default clip");
    let off = hessian_options_of("bits: 4, token_clip: null");
    assert_eq!(off.token_clip, None);
    assert_eq!(
        off.window_starts,
        Some(crate::pipeline::hessian::DEFAULT_WINDOW_STARTS),
        "window starts weighted by default"
    );
    assert_eq!(
        hessian_options_of("bits: 4, window_starts: null").window_starts,
        None
    );
    let w = hessian_options_of("bits: 4, window_starts: {positions: 1, reference_seqlen: 256}")
        .window_starts
        .unwrap();
    assert_eq!((w.positions, w.reference_len), (1, 256));
    let rtn = r.stages[0].passes[1]
        .args()
        .weight_scheme()
        .unwrap()
        .unwrap();
    assert_eq!(rtn, QuantScheme::W4A16_ASYM.with_group_size(None));
    // Without a preset: group 128, symmetric.
    let plain = r.stages[0].passes[2]
        .args()
        .weight_scheme()
        .unwrap()
        .unwrap();
    assert_eq!(
        plain,
        QuantScheme {
            bits: 8,
            group_size: Some(128),
            symmetric: true
        }
    );
    let c = r.calibration.unwrap();
    assert_eq!(c.source, CalibrationSource::Text("notes.txt".into()));
    assert_eq!((c.num_samples.0, c.seqlen.0, c.seed), (16, 512, 3));
    // Defaults.
    let r = parse(GPTQ).unwrap();
    let Pass::Gptq(g) = &r.stages[0].passes[0] else {
        panic!()
    };
    let o = g.options().unwrap();
    assert_eq!(o, crate::gptq::GptqOptions::new(QuantScheme::W4A16));
    let c = r.calibration.unwrap();
    assert_eq!((c.num_samples.0, c.seqlen.0, c.seed), (128, 2048, 0));
    assert_eq!(g.targets, vec![Pattern::Linear]);
}

#[test]
fn calibration_sources_parse() {
    use CalibrationSource as C;
    assert_eq!(C::parse("mt-bench"), Ok(C::MtBench));
    assert_eq!(
        C::parse("data/x.jsonl:ctx"),
        Ok(C::Jsonl {
            path: "data/x.jsonl".into(),
            field: "ctx".into()
        })
    );
    assert_eq!(C::parse("text:a.raw"), Ok(C::Text("a.raw".into())));
    assert_eq!(C::parse("tokens:c.i32"), Ok(C::Tokens("c.i32".into())));
    assert!(C::parse("tokens:").is_err());
}

#[test]
fn targets_resolve_on_smollm2_names() {
    let names = smollm2_names();
    let r = parse(
        "calibration: {source: hellaswag}\n\
         stages:\n\
         \x20 - name: attention\n\
         \x20   passes:\n\
         \x20     - gptq:\n\
         \x20         scheme: W4A16\n\
         \x20         group_size: 64\n\
         \x20         targets: [\"re:.*self_attn\\\\.(q|k|v|o)_proj$\"]\n\
         \x20         ignore: [\"re:model\\\\.layers\\\\.29\\\\.\", model.layers.0.self_attn.o_proj]\n\
         \x20 - name: mlp\n\
         \x20   passes:\n\
         \x20     - rtn:\n\
         \x20         scheme: W8A16\n\
         \x20         targets: [\"re:.*mlp\", lm_head.weight]\n",
    )
    .unwrap();
    let t = r.resolve_targets(&names).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].key, "stages[0].passes[0].gptq");
    assert_eq!((t[0].stage, t[0].pass, t[0].kind), (0, 0, "gptq"));
    // 4 attention projections x 29 layers, minus layer 0's o_proj.
    assert_eq!(t[0].tensors.len(), 4 * 29 - 1);
    assert_eq!(t[0].tensors[0], "model.layers.0.self_attn.q_proj.weight");
    assert!(!t[0]
        .tensors
        .iter()
        .any(|n| n.contains("layers.29.") || n == "model.layers.0.self_attn.o_proj.weight"));
    // Regexes are anchored at the start only (Python's re.match): `re:.*mlp` selects the
    // mlp projections' weights; norms and embeddings are never candidates.
    assert_eq!(t[1].tensors.len(), 3 * 30 + 1);
    assert_eq!(t[1].tensors.last().unwrap(), "lm_head.weight");
    assert_eq!(t[1].kind, "rtn");

    // Default targets (every linear) with lm_head ignored: 210 weights; ignoring a name the
    // checkpoint lacks (tied head) is fine.
    let r = parse(GPTQ).unwrap();
    assert_eq!(r.resolve_targets(&names).unwrap()[0].tensors.len(), 211);
    let tied: Vec<String> = names
        .iter()
        .filter(|n| *n != "lm_head.weight")
        .cloned()
        .collect();
    let r = parse(&format!("{GPTQ}          ignore: [lm_head]\n")).unwrap();
    assert_eq!(r.resolve_targets(&tied).unwrap()[0].tensors.len(), 210);
}

#[test]
fn a_target_that_matches_nothing_names_file_pass_and_pattern() {
    let text = format!(
        "{GPTQ}          targets:\n            - lm_head\n            - \"re:.*attn\\\\.qproj$\"\n"
    );
    let r = parse(&text).unwrap();
    let msg = r.resolve_targets(&smollm2_names()).unwrap_err().to_string();
    assert_msg(
        &msg,
        &[
            "line 10",
            "stages[0].passes[0].gptq.targets[1]",
            "`re:.*attn\\.qproj$` matches none of the 211 linear weights",
        ],
    );
    // An exact name must be the whole module or tensor name.
    let r = parse(&format!("{GPTQ}          targets: [q_proj]\n")).unwrap();
    let msg = r.resolve_targets(&smollm2_names()).unwrap_err().to_string();
    assert_msg(
        &msg,
        &["line 8", "gptq.targets[0]", "`q_proj` matches none"],
    );
    // A non-linear tensor is not a target.
    let r = parse(&format!("{GPTQ}          targets: [model.norm]\n")).unwrap();
    assert!(r.resolve_targets(&smollm2_names()).is_err());
}

#[test]
fn a_weight_is_quantized_by_one_pass_only() {
    let text = format!("{GPTQ}      - rtn: {{bits: 8, ignore: [lm_head]}}\n");
    let r = parse(&text).unwrap();
    let msg = r.resolve_targets(&smollm2_names()).unwrap_err().to_string();
    assert_msg(
        &msg,
        &[
            "line 8",
            "stages[0].passes[1].rtn",
            "already quantized by stages[0].passes[0].gptq",
        ],
    );
    let text = format!("{GPTQ}          targets: [lm_head]\n          ignore: [\"re:lm_\"]\n");
    let msg = parse(&text)
        .unwrap()
        .resolve_targets(&smollm2_names())
        .unwrap_err()
        .to_string();
    assert_msg(&msg, &["line 5", "selects no weights"]);
}

#[test]
fn locate_finds_keys_and_values_in_document_order() {
    let text = "a: x # gptq: lm_head\nstages:\n  - passes: [{gptq: {ignore: [lm_head]}}]\n  \
                - passes:\n      - gptq: {targets: ['re:lm_head.*', lm_head]}\n";
    assert_eq!(locate(text, "gptq", Find::Key, 0), Some(3));
    assert_eq!(locate(text, "gptq", Find::Key, 1), Some(5));
    assert_eq!(locate(text, "gptq", Find::Key, 2), None);
    assert_eq!(locate(text, "lm_head", Find::Value, 0), Some(3));
    assert_eq!(locate(text, "lm_head", Find::Value, 1), Some(5));
    assert_eq!(locate(text, "re:lm_head.*", Find::Value, 0), Some(5));
    assert_eq!(locate(text, "passes", Find::Key, 1), Some(4));
}

#[test]
fn linear_modules_are_projections_and_the_head() {
    assert_eq!(
        linear_module("model.layers.3.mlp.down_proj.weight"),
        Some("model.layers.3.mlp.down_proj")
    );
    assert_eq!(linear_module("lm_head.weight"), Some("lm_head"));
    assert_eq!(linear_module("model.layers.3.self_attn.q_proj.bias"), None);
    assert_eq!(linear_module("model.embed_tokens.weight"), None);
    assert_eq!(linear_module("model.norm.weight"), None);
}

#[test]
fn medusa_block_parses_with_defaults_and_rejects_bad_keys() {
    let r = parse(&format!("{GPTQ}medusa: {{heads: 3, steps: 50}}\n")).unwrap();
    let m = r.medusa.unwrap();
    assert_eq!((m.heads.0, m.layers.0, m.steps.0, m.lr.0), (3, 1, 50, 1e-3));
    assert!(m.token_input && !m.recurrent);
    let r = parse(&format!("{GPTQ}medusa: {{recurrent: true}}\n")).unwrap();
    assert!(r.medusa.unwrap().recurrent);
    assert!(parse(GPTQ).unwrap().medusa.is_none());
    let msg = err(&format!("{GPTQ}medusa:\n  heads: 4\n  head_count: 2\n"));
    assert_msg(&msg, &["line 10", "unknown field `head_count`"]);
    let msg = err(&format!("{GPTQ}medusa:\n  lr: 0\n"));
    assert_msg(&msg, &["line 9", "medusa.lr", "lr 0 is invalid"]);
    let msg = err(&format!("{GPTQ}medusa: {{heads: 0}}\n"));
    assert_msg(&msg, &["medusa.heads"]);
}
