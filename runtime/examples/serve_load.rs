//! Load test for `serve-local` (loopback only): N concurrent streaming clients of T tokens
//! each against the same prompts run one at a time. Reports p50/p99 time to first token and
//! time per output token, total tokens/s, the batching gain, and whether every concurrent
//! stream got exactly its own tokens (its text equals the one-at-a-time run of its prompt).
//!
//! `cargo run --release -p lmq-runtime --example serve_load -- --clients 64 --tokens 128`
//! starts the server in-process on a free loopback port (`--url` targets a running one).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use clap::Parser;
use futures_util::StreamExt;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::serve::engine::EngineOptions;
use lmq_runtime::serve::{app, build_state, ServeOptions};
use lmq_runtime::Cpu;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "smollm2")]
    model: String,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Run the one-at-a-time baseline over only this many of the prompts (default: all, so
    /// every concurrent stream is checked against its own lone run).
    #[arg(long)]
    baseline: Option<usize>,
    /// A running server instead of an in-process one.
    #[arg(long)]
    url: Option<String>,
}

/// One streamed request's measurements.
struct Run {
    text: String,
    tokens: usize,
    done: bool,
    ttft: Duration,
    /// Gaps between consecutive tokens after the first.
    gaps: Vec<Duration>,
    end: Instant,
}

fn prompt(i: usize) -> String {
    const TOPICS: [&str; 16] = [
        "the history of Rome",
        "how rain forms",
        "a dog who learns to fly",
        "the rules of chess",
        "why the sky is blue",
        "a recipe for bread",
        "the life of bees",
        "how computers add numbers",
        "a trip to the mountains",
        "the planets of the solar system",
        "a lighthouse keeper",
        "how to plant tomatoes",
        "the first airplane",
        "a city under the sea",
        "the moon landing",
        "a robot that paints",
    ];
    format!("Story {i}: Write about {}.", TOPICS[i % TOPICS.len()])
}

async fn stream_one(client: &reqwest::Client, url: &str, i: usize, tokens: usize) -> Result<Run> {
    let body = json!({"prompt": prompt(i), "max_tokens": tokens, "temperature": 0,
                      "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let t0 = Instant::now();
    let resp = client
        .post(format!("{url}/v1/completions"))
        .json(&body)
        .send()
        .await?;
    ensure!(resp.status() == 200, "status {}", resp.status());
    let mut s = resp.bytes_stream();
    let (mut buf, mut text, mut times, mut done, mut usage) =
        (String::new(), String::new(), vec![], false, 0);
    while let Some(chunk) = s.next().await {
        buf += &String::from_utf8_lossy(&chunk?);
        while let Some(at) = buf.find("\n\n") {
            let ev: String = buf.drain(..at + 2).collect();
            let Some(data) = ev.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(data)?;
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                usage = n as usize;
            }
            if let Some(t) = v["choices"][0]["text"].as_str() {
                if !t.is_empty() {
                    times.push(Instant::now());
                    text += t;
                }
            }
        }
    }
    let first = *times.first().unwrap_or(&t0);
    Ok(Run {
        text,
        tokens: usage,
        done,
        ttft: first - t0,
        gaps: times.windows(2).map(|w| w[1] - w[0]).collect(),
        end: *times.last().unwrap_or(&t0),
    })
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Args::parse();
    let url = match &a.url {
        Some(u) => u.clone(),
        None => {
            let ckpt = Checkpoint::open(&a.model)?;
            let model = ckpt.load_model::<Cpu>(&Default::default())?;
            let opts = ServeOptions {
                model_id: a.model.clone(),
                engine: EngineOptions {
                    max_batch: a.clients.max(1),
                    ..Default::default()
                },
                ..Default::default()
            };
            let st = build_state(&ckpt, model, opts, None)?;
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?;
            tokio::spawn(async move { axum::serve(l, app(st)).await });
            format!("http://{addr}")
        }
    };
    let client = reqwest::Client::new();
    let n_base = a.baseline.unwrap_or(a.clients).min(a.clients);
    eprintln!("one at a time: {n_base} streams of {} tokens …", a.tokens);
    let t0 = Instant::now();
    let mut alone = vec![];
    for i in 0..n_base {
        alone.push(stream_one(&client, &url, i, a.tokens).await?);
    }
    let base_wall = t0.elapsed().as_secs_f64();
    let base_tokens: usize = alone.iter().map(|r| r.tokens).sum();
    eprintln!("{} concurrent streams of {} tokens …", a.clients, a.tokens);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..a.clients)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { stream_one(&client, &url, i, a.tokens).await })
        })
        .collect();
    let mut conc = vec![];
    for t in tasks {
        conc.push(t.await??);
    }
    let end = conc.iter().map(|r| r.end).max().unwrap();
    let conc_wall = (end - t0).as_secs_f64();
    let conc_tokens: usize = conc.iter().map(|r| r.tokens).sum();
    let complete = conc
        .iter()
        .filter(|r| r.done && r.tokens == a.tokens)
        .count();
    let same = conc
        .iter()
        .zip(&alone)
        .filter(|(c, l)| c.text == l.text)
        .count();
    // Where differing streams first diverge (batched f32 sums may flip a near-tie argmax).
    let diverge: Vec<usize> = conc
        .iter()
        .zip(&alone)
        .filter(|(c, l)| c.text != l.text)
        .map(|(c, l)| {
            c.text
                .bytes()
                .zip(l.text.bytes())
                .take_while(|(x, y)| x == y)
                .count()
        })
        .collect();
    let report = |name: &str, runs: &[Run], wall: f64, tokens: usize| {
        let mut ttft: Vec<Duration> = runs.iter().map(|r| r.ttft).collect();
        let mut gaps: Vec<Duration> = runs.iter().flat_map(|r| r.gaps.clone()).collect();
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {tokens} | {wall:.1} | {:.1} |",
            runs.len(),
            pct(&mut ttft, 0.5),
            pct(&mut ttft, 0.99),
            pct(&mut gaps, 0.5),
            pct(&mut gaps, 0.99),
            tokens as f64 / wall
        );
    };
    println!("| run | streams | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | tokens | wall s | tokens/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    report("one at a time", &alone, base_wall, base_tokens);
    report("concurrent", &conc, conc_wall, conc_tokens);
    println!(
        "\nbatching gain: {:.2}x tokens/s; complete streams {complete}/{}; text equal to the lone run {same}/{n_base}; first divergence at bytes {diverge:?}",
        (conc_tokens as f64 / conc_wall) / (base_tokens as f64 / base_wall),
        a.clients,
    );
    Ok(())
}
