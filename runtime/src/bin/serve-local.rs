//! `serve-local --model M`: an OpenAI-compatible server on loopback (see `lmq_runtime::serve`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::device::{run_on, DeviceSpec, OnBackend};
use lmq_runtime::model::LinearBackend;
use lmq_runtime::serve::engine::EngineOptions;
use lmq_runtime::serve::{app, build_state, ServeOptions, ServerState};
use lmq_runtime::speculative::choose::proposer_for;
use std::sync::Arc;

/// Serve a model over OpenAI's completions and chat APIs.
#[derive(Parser, Debug)]
#[command(name = "serve-local", version)]
struct Args {
    /// A .gguf file, an HF/quantized model directory, or a cached asset name (smollm2, ...).
    #[arg(long)]
    model: String,
    /// Name clients pass as `model` (default: the file or directory name without extension).
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// off, lookup[:MIN_NGRAM] (prompt n-gram lookup), draft:MODEL (a smaller model with the
    /// same vocabulary), early-exit:LAYERS, medusa[:DIR] (Medusa heads' guesses as a chain;
    /// DIR defaults to MODEL/medusa); `X@K` proposes at most K tokens a step, `X~P` (a draft
    /// or Medusa) only guesses it gives probability P or more, `A+B` takes A's guess where it
    /// has one, else B's. Used while a single request is running.
    #[arg(long, default_value = "off")]
    speculative: String,
    /// Tokens proposed per speculative step.
    #[arg(long, default_value_t = 4)]
    speculative_k: usize,
    /// Sequences decoded together in one batched step.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Requests that may wait for a slot; beyond them the server answers 503 + Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Cap on prompt + generated tokens per request (default: the model's context).
    #[arg(long)]
    max_context: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_s: u64,
    /// `cpu`, or `cuda[:N]` (a build with `--features cuda` and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// Loads the model on the chosen backend and starts the engine on it.
struct StartEngine<'a> {
    args: &'a Args,
    ckpt: &'a Checkpoint,
    opts: ServeOptions,
}

impl OnBackend for StartEngine<'_> {
    type Output = Result<Arc<ServerState>>;

    fn run<B: LinearBackend>(self, device: B::Device) -> Self::Output {
        let model = self.ckpt.load_model::<B>(&device)?;
        let proposer = proposer_for(&self.args.speculative, &model, &self.ckpt.path, &device)?;
        build_state(self.ckpt, model, self.opts, proposer)
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let ckpt = Checkpoint::open(&args.model)?;
    let model_id = args.served_model_name.clone().unwrap_or_else(|| {
        Path::new(&args.model)
            .file_stem()
            .map_or(args.model.clone(), |s| s.to_string_lossy().into_owned())
    });
    let opts = ServeOptions {
        model_id: model_id.clone(),
        max_context: args.max_context,
        max_body_bytes: args.max_body_bytes,
        engine: EngineOptions {
            max_batch: args.max_batch.max(1),
            max_queue: args.max_queue,
            panic_on: None,
            speculative_k: args.speculative_k,
        },
    };
    let state = run_on(
        args.device,
        StartEngine {
            args: &args,
            ckpt: &ckpt,
            opts,
        },
    )??;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("bad address {}:{}", args.host, args.port))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!(
            "serve-local: `{model_id}` on http://{} (context {}, batch {})",
            listener.local_addr()?,
            state.context,
            args.max_batch
        );
        let grace = Duration::from_secs(args.shutdown_grace_s);
        let server = axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal());
        tokio::select! {
            r = server => r.context("server")?,
            _ = async { shutdown_signal().await; tokio::time::sleep(grace).await } => {
                eprintln!("serve-local: grace period over; cancelling in-flight requests");
            }
        }
        eprintln!("serve-local: stopped");
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
