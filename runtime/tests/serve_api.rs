//! `serve-local`'s router on the real SmolLM2 (in-process, axum's testing style, plus a
//! loopback listener for streaming and disconnects): completions equal `generate`, echo
//! log-probabilities equal the model's own, stop sequences, seeded sampling, chat, SSE,
//! continuous batching keeps streams apart, and the bad-input table leaves it serving.

use std::sync::{Arc, OnceLock};

mod common;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use lmq_runtime::generate::generate;
use lmq_runtime::medusa::{MedusaConfig, MedusaHeads};
use lmq_runtime::sampling::SamplingParams;
use lmq_runtime::serve::engine::EngineOptions;
use lmq_runtime::serve::logprobs::log_sum_exp;
use lmq_runtime::serve::{app, build_state, AppState, ServeOptions};
use lmq_runtime::speculative::choose::proposer_for;
use serde_json::{json, Value};
use tower::ServiceExt;

/// Log-probabilities from the server against the model's logits (same f32 logits, f64
/// normalization on both sides; batching of the decode step may reorder f32 sums).
const LOGPROB_TOL: f64 = 1e-3;

use common::smollm2 as fixture;

fn state_with(engine: EngineOptions) -> AppState {
    let f = fixture();
    let opts = ServeOptions {
        model_id: "smollm2".into(),
        max_context: Some(2048),
        max_body_bytes: 1 << 20,
        engine,
    };
    build_state(&f.ckpt, f.model.clone(), opts, None).unwrap()
}

fn shared() -> AppState {
    static S: OnceLock<AppState> = OnceLock::new();
    S.get_or_init(|| state_with(EngineOptions::default()))
        .clone()
}

async fn call(st: &AppState, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let req = Request::builder().method(method).uri(path);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    raw(st, req).await
}

async fn metrics_text(st: &AppState) -> String {
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn raw(st: &AppState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn greedy_completion_equals_generate() {
    let st = shared();
    let f = fixture();
    for prompt in [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time",
    ] {
        let ids = f.ckpt.tokenizer.encode(prompt, true).unwrap();
        let want = generate(
            &f.model,
            &ids,
            12,
            SamplingParams::default(),
            &f.ckpt.config.eos_token_ids,
            |_| {},
        )
        .unwrap();
        let want = f.ckpt.tokenizer.decode(&want, true).unwrap();
        let (s, v) = call(
            &st,
            "POST",
            "/v1/completions",
            Some(json!({"prompt": prompt, "max_tokens": 12, "temperature": 0})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(text_of(&v), want, "{prompt}");
        assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    }
}

#[tokio::test]
async fn speculative_serving_gives_the_same_greedy_text() {
    let f = fixture();
    // Untrained (zero) Medusa heads on disk: served as `medusa:DIR`.
    let heads = tempfile::tempdir().unwrap();
    MedusaHeads::zeros(MedusaConfig {
        num_heads: 3,
        num_layers: 1,
        hidden_size: f.model.config.hidden_size,
        token_input: false,
        recurrent: false,
    })
    .save(heads.path())
    .unwrap();
    let medusa = format!("medusa:{}", heads.path().display());
    match proposer_for(
        "medusa:/no/such/heads",
        &f.model,
        &f.ckpt.path,
        &Default::default(),
    ) {
        Err(e) => assert!(e.to_string().contains("/no/such/heads"), "{e}"),
        Ok(_) => panic!("missing Medusa heads were accepted"),
    }
    for spec in ["lookup", "early-exit:10", medusa.as_str()] {
        let proposer = proposer_for(spec, &f.model, &f.ckpt.path, &Default::default()).unwrap();
        let opts = ServeOptions {
            model_id: "smollm2".into(),
            max_context: Some(2048),
            ..ServeOptions::default()
        };
        let st = build_state(&f.ckpt, f.model.clone(), opts, proposer).unwrap();
        for prompt in [
            "List the days of the week: Monday, Tuesday,",
            "def add(a, b):\n    return a + b\n\ndef sub(a, b):",
        ] {
            let (_, plain) = call(
                &shared(),
                "POST",
                "/v1/completions",
                Some(json!({"prompt": prompt, "max_tokens": 24, "temperature": 0})),
            )
            .await;
            let (s, v) = call(
                &st,
                "POST",
                "/v1/completions",
                Some(json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 1})),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(text_of(&v), text_of(&plain), "{spec}: {prompt}");
            assert_eq!(
                v["usage"]["completion_tokens"],
                plain["usage"]["completion_tokens"]
            );
        }
        let text = metrics_text(&st).await;
        assert!(text.contains("lmq_spec_acceptance_rate"), "{spec}: {text}");
    }
}

#[tokio::test]
async fn echo_logprobs_are_the_models_own() {
    let st = shared();
    let f = fixture();
    let ids = f
        .ckpt
        .tokenizer
        .encode("The quick brown fox jumps over", true)
        .unwrap();
    let (s, v) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(json!({
            "prompt": [ids.clone()], "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": 1
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let token_lps = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_lps.len(), ids.len() + 1);
    assert!(token_lps[0].is_null());
    let logits = f.model.logits_of(&ids);
    let vocab = f.model.config.vocab_size;
    for i in 1..ids.len() {
        let row = &logits[(i - 1) * vocab..][..vocab];
        let want = row[ids[i] as usize] as f64 - log_sum_exp(row);
        let got = token_lps[i].as_f64().unwrap();
        assert!(
            (got - want).abs() < LOGPROB_TOL,
            "position {i}: {got} vs {want}"
        );
        // The top-1 entry is the argmax's log-probability: what lm-eval's is_greedy reads.
        let top = lp["top_logprobs"][i].as_object().unwrap();
        let best = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64 - log_sum_exp(row);
        assert!((top.values().next().unwrap().as_f64().unwrap() - best).abs() < LOGPROB_TOL);
    }
    // Greedy: the generated token's logprob is the top one.
    let last = token_lps[ids.len()].as_f64().unwrap();
    let top = lp["top_logprobs"][ids.len()].as_object().unwrap();
    assert_eq!(top.values().next().unwrap().as_f64().unwrap(), last);
    // Echo returns the prompt text first.
    assert!(text_of(&v).starts_with("The quick brown fox jumps over"));
}

#[tokio::test]
async fn an_end_of_sequence_token_is_reported_with_its_logprob() {
    // SmolLM2's greedy next token after this PIQA answer is <|endoftext|>. lm-eval scores
    // `token_logprobs[ctxlen:-1]`, so the EOS must be there or the answer's last token is lost.
    let st = shared();
    let text =
        "Question: How do you attach toilet paper to a glass jar?\nAnswer: Press a piece of \
                double-sided tape to the glass jar and then press the toilet paper onto the tape.";
    let (s, v) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(json!({
            "prompt": text, "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": 1
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let n = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 1);
    assert_eq!(
        v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        n + 1
    );
    assert!(
        text_of(&v).ends_with("onto the tape."),
        "no EOS text: {}",
        text_of(&v)
    );
}

#[tokio::test]
async fn stop_sequences_cut_the_text() {
    let st = shared();
    let (_, full) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "1, 2, 3, 4,", "max_tokens": 16, "temperature": 0})),
    )
    .await;
    let full = text_of(&full);
    let stop = " 7";
    let at = full.find(stop).expect("the count reaches 7");
    let (s, v) = call(&st, "POST", "/v1/completions",
        Some(json!({"prompt": "1, 2, 3, 4,", "max_tokens": 16, "temperature": 0, "stop": [stop, "zzz"]}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(text_of(&v), full[..at]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn seeded_sampling_is_reproducible() {
    let st = shared();
    let body = |seed: u64| {
        json!({"prompt": "My favourite food is", "max_tokens": 16,
        "temperature": 1.0, "top_p": 0.95, "seed": seed})
    };
    let (_, a) = call(&st, "POST", "/v1/completions", Some(body(1234))).await;
    let (_, b) = call(&st, "POST", "/v1/completions", Some(body(1234))).await;
    let (_, c) = call(&st, "POST", "/v1/completions", Some(body(99))).await;
    assert_eq!(text_of(&a), text_of(&b));
    assert_ne!(
        text_of(&a),
        text_of(&c),
        "another seed, another sample (16 tokens at T=1)"
    );
}

#[tokio::test]
async fn chat_uses_the_template_and_stops_at_end_of_turn() {
    let st = shared();
    let (s, v) = call(
        &st,
        "POST",
        "/v1/chat/completions",
        Some(json!({
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 64, "temperature": 0, "logprobs": true, "top_logprobs": 2
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    let content = msg["content"].as_str().unwrap();
    assert!(content.contains("Paris"), "{content}");
    assert!(!content.contains("<|im_end|>"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let lps = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        lps.len(),
        v["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    assert_eq!(lps[0]["top_logprobs"].as_array().unwrap().len(), 2);
    // The prompt is the ChatML rendering (SmolLM2 adds its default system turn).
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 20);
}

/// Serves `st` on a loopback port; returns the base URL.
async fn listen(st: AppState) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app(st)).await.unwrap() });
    format!("http://{addr}")
}

/// Reads an SSE response to the end: the `data:` payloads in order.
async fn sse(resp: reqwest::Response) -> Vec<String> {
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf += &String::from_utf8_lossy(&chunk.unwrap());
    }
    buf.lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_equal_whole_answers_and_concurrent_streams_stay_apart() {
    let st = shared();
    let url = listen(st.clone()).await;
    let prompts = [
        "The capital of France is",
        "Water boils at",
        "The largest planet is",
        "def add(a, b):",
        "In 1492,",
        "My name is",
    ];
    let mut want = vec![];
    for p in prompts {
        let (_, v) = call(
            &st,
            "POST",
            "/v1/completions",
            Some(json!({"prompt": p, "max_tokens": 24, "temperature": 0})),
        )
        .await;
        want.push(text_of(&v));
    }
    let client = reqwest::Client::new();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (client, url) = (client.clone(), url.clone());
            let body = json!({"prompt": p, "max_tokens": 24, "temperature": 0, "stream": true,
                          "stream_options": {"include_usage": true}});
            tokio::spawn(async move {
                let r = client
                    .post(format!("{url}/v1/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                sse(r).await
            })
        })
        .collect();
    for (task, want) in tasks.into_iter().zip(&want) {
        let events = task.await.unwrap();
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        // Batched decoding may differ from the lone run in the last float bits; greedy text
        // over 24 tokens agrees.
        assert_eq!(&text, want);
        let usage = chunks.last().unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 24);
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "length"
        );
    }
    // Chat streaming: role first, content deltas, an empty delta with the finish reason.
    let r = client.post(format!("{url}/v1/chat/completions")).json(&json!({
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0, "stream": true
    })).send().await.unwrap();
    let events = sse(r).await;
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_503_and_a_client_that_leaves_frees_its_slot() {
    let st = state_with(EngineOptions {
        max_batch: 1,
        max_queue: 0,
        ..EngineOptions::default()
    });
    let url = listen(st.clone()).await;
    let client = reqwest::Client::new();
    let long = json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 1500, "temperature": 0, "stream": true, "ignore_eos": true});
    let r = client
        .post(format!("{url}/v1/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap(); // generating now
    let (s, v) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "x", "max_tokens": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["type"], "server_busy");
    let resp = app(st.clone())
        .oneshot(
            Request::post("/v1/completions")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"prompt":"x","max_tokens":2}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    drop(body); // the client goes away mid-stream
    let t0 = Instant::now();
    loop {
        let (s, _) = call(
            &st,
            "POST",
            "/v1/completions",
            Some(json!({"prompt": "x", "max_tokens": 2})),
        )
        .await;
        if s == StatusCode::OK {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_the_server_keeps_serving() {
    let f = fixture();
    let marker = f.ckpt.tokenizer.encode(" PANIC-NOW", false).unwrap();
    let st = state_with(EngineOptions {
        panic_on: Some(marker),
        ..EngineOptions::default()
    });
    let post = |body: Body| {
        Request::post("/v1/completions")
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    };
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "malformed JSON",
            post(Body::from(r#"{"prompt": "x","#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "10 MB body",
            post(Body::from(format!(
                r#"{{"prompt": "{}"}}"#,
                "a".repeat(10 << 20)
            ))),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "negative max_tokens",
            post(Body::from(r#"{"prompt": "x", "max_tokens": -5}"#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong field type",
            post(Body::from(r#"{"prompt": "x", "temperature": "hot"}"#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "prompt longer than the context",
            post(Body::from(
                json!({"prompt": "word ".repeat(2100), "max_tokens": 1}).to_string(),
            )),
            StatusCode::BAD_REQUEST,
        ),
        (
            "out of range top_p",
            post(Body::from(r#"{"prompt": "x", "top_p": 1.5}"#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "token id outside the vocabulary",
            post(Body::from(r#"{"prompt": [1, 999999]}"#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown model",
            post(Body::from(r#"{"prompt": "x", "model": "gpt-4"}"#)),
            StatusCode::NOT_FOUND,
        ),
        (
            "unknown route",
            Request::get("/v1/engines").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
        ),
        (
            "no content type",
            Request::post("/v1/completions")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "a panic inside the engine",
            post(Body::from(
                r#"{"prompt": "hello PANIC-NOW", "max_tokens": 2}"#,
            )),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ];
    for (what, req, want) in cases {
        let (s, v) = raw(&st, req).await;
        assert_eq!(s, want, "{what}: {v}");
        assert!(
            v["error"]["message"].is_string(),
            "{what}: OpenAI error shape: {v}"
        );
        let (s, v) = call(
            &st,
            "POST",
            "/v1/completions",
            Some(json!({"prompt": "Hello", "max_tokens": 2})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "still serving after {what}: {v}");
    }
    let (s, v) = call(
        &st,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "word ".repeat(2100), "max_tokens": 1})),
    )
    .await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        s == 400 && msg.contains("2048") && msg.contains("2101"),
        "names both numbers: {msg}"
    );
    // Metrics count what happened.
    let text = metrics_text(&st).await;
    assert!(
        text.contains("lmq_requests_total{endpoint=\"completions\",status=\"500\"} 1"),
        "{text}"
    );
    assert!(text.contains("lmq_time_to_first_token_seconds_count"));
    let (s, v) = call(&st, "GET", "/health", None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let _ = Arc::strong_count(&st);
}
