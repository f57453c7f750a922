//! `cargo xtask bench decode`: our runtime against llama.cpp's `llama-bench` on the same
//! models at the same bits, alternating on this machine, with ratios (issue #8).
//!
//! llama.cpp is built once from the vendored source in the `llama-cpp-python` asset into the
//! asset cache (cmake from PATH, else from a venv of PyPI's `cmake` in the cache). Its
//! variants are requantized from the same GGUF our runtime loads (`llama-quantize
//! --allow-requantize`: F32, Q8_0, Q4_0); ours are written by `quantize` from that GGUF
//! (f32 = the GGUF dequantized at load, RTN w8 per channel, RTN w4 groups of 128, or 64
//! where the hidden size is not a multiple of 128).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lmq_runtime::assets::{self, Asset};

use crate::build_release_bins;

/// What `bench decode` was asked for.
pub struct DecodeBenchArgs {
    pub models: Vec<String>,
    pub threads: Vec<usize>,
    pub reps: usize,
    /// Alternations of ours and llama.cpp per row (best of each kept).
    pub rounds: usize,
    pub out: PathBuf,
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// cmake from PATH, else from a venv in the cache with PyPI's `cmake` wheel.
fn cmake() -> Result<PathBuf> {
    if Command::new("cmake").arg("--version").output().is_ok() {
        return Ok("cmake".into());
    }
    let venv = assets::cache_dir().join("venv-cmake");
    let bin = venv.join("bin/cmake");
    if !bin.is_file() {
        eprintln!("[bench] installing cmake (PyPI) into {}", venv.display());
        run_ok(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
        run_ok(
            Command::new(venv.join("bin/pip")).args(["install", "--quiet", "cmake"]),
            "pip install cmake",
        )?;
    }
    Ok(bin)
}

/// `llama-bench` and `llama-quantize`, built once into the cache.
fn llama_cpp() -> Result<(PathBuf, PathBuf)> {
    let src_root = assets::ensure(Asset::LlamaCppSource).context("llama.cpp source")?;
    let src = src_root.join("vendor/llama.cpp");
    let build = assets::cache_dir().join("llama.cpp-build-0.3.36");
    let (bench, quant) = (
        build.join("bin/llama-bench"),
        build.join("bin/llama-quantize"),
    );
    if bench.is_file() && quant.is_file() {
        return Ok((bench, quant));
    }
    let cmake = cmake()?;
    eprintln!("[bench] building llama.cpp into {} (once)", build.display());
    run_ok(
        Command::new(&cmake)
            .arg("-S")
            .arg(&src)
            .arg("-B")
            .arg(&build)
            .args([
                "-DCMAKE_BUILD_TYPE=Release",
                "-DGGML_NATIVE=ON",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_BUILD_SERVER=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
            ]),
        "cmake configure",
    )?;
    let jobs = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    // Inherit the output: the build takes minutes and prints its progress.
    let status = Command::new(&cmake)
        .arg("--build")
        .arg(&build)
        .args(["--target", "llama-bench", "llama-quantize", "-j", &jobs])
        .status()
        .context("running cmake --build")?;
    if !status.success() {
        bail!(
            "building llama.cpp failed ({status}); the build tree is {}",
            build.display()
        );
    }
    Ok((bench, quant))
}

/// One benchmarked variant: its name, llama.cpp's file and type, our checkpoint.
struct Variant {
    name: &'static str,
    llama_type: &'static str,
    recipe: Option<String>,
}

fn variants(hidden: usize) -> Vec<Variant> {
    let g = if hidden.is_multiple_of(128) { 128 } else { 64 };
    vec![
        Variant {
            name: "f32",
            llama_type: "F32",
            recipe: None,
        },
        Variant {
            name: "8-bit",
            llama_type: "Q8_0",
            recipe: Some(
                "stages:\n  - passes:\n      - rtn: {bits: 8, symmetric: true, group_size: channel, targets: [Linear], ignore: [lm_head]}\n"
                    .into(),
            ),
        },
        // llama.cpp's Q8_0 and Q4_0 files quantize the (tied) vocabulary matrix too (Q8_0);
        // ours can, with an 8-bit group-32 head: the like-for-like rows.
        Variant {
            name: "8-bit, 8-bit head",
            llama_type: "Q8_0",
            recipe: Some(
                "stages:\n  - passes:\n      - rtn: {bits: 8, symmetric: true, group_size: channel, targets: [Linear], ignore: [lm_head]}\n      - rtn: {bits: 8, group_size: 32, symmetric: true, targets: [lm_head]}\n"
                    .into(),
            ),
        },
        Variant {
            name: "4-bit",
            llama_type: "Q4_0",
            recipe: Some(format!(
                "stages:\n  - passes:\n      - rtn: {{bits: 4, group_size: {g}, symmetric: true, targets: [Linear], ignore: [lm_head]}}\n"
            )),
        },
        Variant {
            name: "4-bit, 8-bit head",
            llama_type: "Q4_0",
            recipe: Some(format!(
                "stages:\n  - passes:\n      - rtn: {{bits: 4, group_size: {g}, symmetric: true, targets: [Linear], ignore: [lm_head]}}\n      - rtn: {{bits: 8, group_size: 32, symmetric: true, targets: [lm_head]}}\n"
            )),
        },
    ]
}

/// Prefill and decode tokens/s and peak RSS (MiB) of one run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Speed {
    pub pp: f64,
    pub tg: f64,
    pub rss_mib: f64,
}

impl Speed {
    /// The faster of each figure (rounds of the same measurement), the larger RSS.
    pub fn best(self, other: Speed) -> Speed {
        Speed {
            pp: self.pp.max(other.pp),
            tg: self.tg.max(other.tg),
            rss_mib: self.rss_mib.max(other.rss_mib),
        }
    }
}

pub(crate) fn ours(bench: &Path, model: &Path, threads: usize, reps: usize) -> Result<Speed> {
    let out = run_ok(
        Command::new(bench).arg("--model").arg(model).args([
            "--threads",
            &threads.to_string(),
            "--reps",
            &reps.to_string(),
            "--json",
        ]),
        "bench",
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bench --json")?;
    Ok(Speed {
        pp: v["prefill_tok_s"].as_f64().unwrap_or(0.0),
        tg: v["decode_tok_s"].as_f64().unwrap_or(0.0),
        rss_mib: v["peak_rss_mib"].as_f64().unwrap_or(0.0),
    })
}

fn theirs(llama_bench: &Path, model: &Path, threads: usize, reps: usize) -> Result<Speed> {
    let out = run_ok(
        Command::new("/usr/bin/time")
            .args(["-f", "%M"])
            .arg(llama_bench)
            .arg("-m")
            .arg(model)
            .args(["-p", "512", "-n", "128", "-t", &threads.to_string()])
            .args(["-r", &reps.to_string(), "-o", "json"]),
        "llama-bench",
    )?;
    let mut s = parse_llama_bench(&out.stdout)?;
    // /usr/bin/time prints the peak RSS in KiB as the last stderr line.
    let kib: f64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0.0);
    s.rss_mib = kib / 1024.0;
    Ok(s)
}

/// Prefill (`n_prompt` 512) and decode (`n_gen` 128) `avg_ts` from `llama-bench -o json`.
fn parse_llama_bench(json: &[u8]) -> Result<Speed> {
    let v: serde_json::Value = serde_json::from_slice(json).context("llama-bench json")?;
    let mut s = Speed::default();
    for r in v.as_array().into_iter().flatten() {
        let ts = r["avg_ts"].as_f64().unwrap_or(0.0);
        if r["n_prompt"].as_u64() == Some(512) && r["n_gen"].as_u64() == Some(0) {
            s.pp = ts;
        } else if r["n_gen"].as_u64() == Some(128) && r["n_prompt"].as_u64() == Some(0) {
            s.tg = ts;
        }
    }
    if s.pp == 0.0 || s.tg == 0.0 {
        bail!("llama-bench output lacks the pp512 or tg128 row");
    }
    Ok(s)
}

/// Read bandwidth of this machine with `threads` threads streaming a 1 GiB buffer (GB/s).
fn bandwidth(threads: usize) -> f64 {
    let n = (1usize << 30) / 8;
    let data: Vec<u64> = (0..n as u64).collect();
    let chunk = n.div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = data
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        std::hint::black_box(sum);
        best = best.max((n * 8) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}

pub(crate) fn size_bytes(p: &Path) -> u64 {
    if p.is_dir() {
        fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                    .map(|e| e.metadata().map_or(0, |m| m.len()))
                    .sum()
            })
            .unwrap_or(0)
    } else {
        fs::metadata(p).map_or(0, |m| m.len())
    }
}

/// Bytes a decode step reads from a model (a `.gguf` file or a directory of safetensors):
/// every tensor, except the token embedding table when the model has a separate output
/// projection. A step then reads one row of it, not the table: Qwen2.5-Coder-0.5B's GGUF is
/// untied and our checkpoints keep that table in f32 (544 MB), which made the decode
/// bandwidth column read 270%.
fn decode_bytes(p: &Path) -> Result<u64> {
    let tensors = if p.is_dir() {
        safetensors_sizes(&p.join("model.safetensors"))?
    } else {
        let g = lmq_runtime::gguf::GgufFile::open(p)?;
        g.tensors
            .iter()
            .map(|t| (t.name.clone(), t.n_bytes()))
            .collect()
    };
    Ok(bytes_read_per_token(&tensors))
}

/// The rule of [`decode_bytes`] on `(name, bytes)` pairs, in either naming (HF
/// `model.embed_tokens.*` / `lm_head.*`, GGUF `token_embd.*` / `output.*`).
fn bytes_read_per_token(tensors: &[(String, u64)]) -> u64 {
    let is = |n: &str, prefixes: &[&str]| prefixes.iter().any(|p| n.starts_with(p));
    let (embed, head) = (
        ["model.embed_tokens.", "token_embd."],
        ["lm_head.", "output."],
    );
    let untied = tensors.iter().any(|(n, _)| is(n, &head));
    tensors
        .iter()
        .filter(|(n, _)| !(untied && is(n, &embed)))
        .map(|(_, b)| b)
        .sum()
}

/// `(name, bytes)` of every tensor in a safetensors file, from its header.
fn safetensors_sizes(path: &Path) -> Result<Vec<(String, u64)>> {
    use std::io::Read;
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("{}: truncated header", path.display()))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: header is not JSON", path.display()))?;
    let obj = header
        .as_object()
        .context("safetensors header is not an object")?;
    Ok(obj
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(k, v)| {
            let o = v.get("data_offsets")?.as_array()?;
            Some((k.clone(), o.get(1)?.as_u64()? - o.first()?.as_u64()?))
        })
        .collect())
}

/// Builds what is missing, runs every (model, variant, threads) for both runtimes back to
/// back, and prints the table.
pub fn run(args: DecodeBenchArgs) -> Result<()> {
    let (llama_bench, llama_quantize) = llama_cpp()?;
    let [quantize, bench] =
        build_release_bins([("lmq-quant", "quantize"), ("lmq-evals", "bench")])?;
    fs::create_dir_all(&args.out)?;
    let bw: Vec<(usize, f64)> = args.threads.iter().map(|&t| (t, bandwidth(t))).collect();
    let mut rows = Vec::new();
    for name in &args.models {
        let asset = Asset::from_name(name).with_context(|| format!("unknown model {name}"))?;
        let gguf = assets::ensure(asset)?;
        let hidden = lmq_runtime::checkpoint::Checkpoint::open(gguf.to_str().unwrap_or_default())?
            .config
            .hidden_size;
        for v in variants(hidden) {
            let theirs_file = args.out.join(format!("{name}-{}.gguf", v.llama_type));
            if !theirs_file.is_file() {
                run_ok(
                    Command::new(&llama_quantize)
                        .arg("--allow-requantize")
                        .arg(&gguf)
                        .arg(&theirs_file)
                        .arg(v.llama_type),
                    "llama-quantize",
                )?;
            }
            let ours_model = match &v.recipe {
                None => gguf.clone(),
                Some(yaml) => {
                    let dir = args
                        .out
                        .join(format!("{name}-{}", v.name.replace([' ', ','], "")));
                    if !dir.is_dir() {
                        let recipe = args
                            .out
                            .join(format!("{name}-{}.yaml", v.name.replace([' ', ','], "")));
                        fs::write(&recipe, yaml)?;
                        run_ok(
                            Command::new(&quantize)
                                .arg("--model")
                                .arg(&gguf)
                                .arg("--recipe")
                                .arg(&recipe)
                                .arg("--out")
                                .arg(&dir),
                            "quantize",
                        )?;
                    }
                    dir
                }
            };
            for &t in &args.threads {
                let (mut o, mut l) = (Speed::default(), Speed::default());
                for _ in 0..args.rounds.max(1) {
                    o = o.best(ours(&bench, &ours_model, t, args.reps)?);
                    l = l.best(theirs(&llama_bench, &theirs_file, t, args.reps)?);
                }
                eprintln!("[bench] {name} {} t{t}: ours {o:?} llama.cpp {l:?}", v.name);
                // Bytes a decode step reads: the weights as each runtime holds them (our f32
                // variant dequantizes the GGUF at load, so it reads what llama.cpp's F32 does).
                let lb = decode_bytes(&theirs_file)?;
                let ob = if v.recipe.is_some() {
                    decode_bytes(&ours_model)?
                } else {
                    lb
                };
                rows.push((name.clone(), v.name, t, o, l, ob, lb));
            }
        }
    }
    println!(
        "\nmemory read bandwidth: {}",
        bw.iter()
            .map(|(t, g)| format!("{t} thread(s) {g:.1} GB/s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| model | bits | threads | pp512 ours | llama.cpp | ratio | tg128 ours | llama.cpp | ratio | decode bytes/s of bandwidth ours / llama.cpp | peak RSS MiB ours / llama.cpp |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, bits, t, o, l, ob, lb) in rows {
        let b = bw.iter().find(|(tt, _)| *tt == t).map_or(1.0, |x| x.1) * 1e9;
        println!(
            "| {name} | {bits} | {t} | {:.1} | {:.1} | {:.2}× | {:.1} | {:.1} | {:.2}× | {:.0}% / {:.0}% | {:.0} / {:.0} |",
            o.pp,
            l.pp,
            o.pp / l.pp,
            o.tg,
            l.tg,
            o.tg / l.tg,
            100.0 * o.tg * ob as f64 / b,
            100.0 * l.tg * lb as f64 / b,
            o.rss_mib,
            l.rss_mib
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untied_embedding_table_is_not_read_per_token() {
        let t = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(n, b)| (n.to_string(), *b)).collect()
        };
        let tied = t(&[
            ("model.embed_tokens.weight", 100),
            ("model.layers.0.q.weight", 7),
        ]);
        assert_eq!(
            bytes_read_per_token(&tied),
            107,
            "the tied table is the head"
        );
        let untied = t(&[
            ("model.embed_tokens.weight", 100),
            ("lm_head.weight_packed", 30),
            ("lm_head.weight_scale", 2),
            ("model.layers.0.q.weight", 7),
        ]);
        assert_eq!(bytes_read_per_token(&untied), 39);
        let gguf = t(&[
            ("token_embd.weight", 50),
            ("output.weight", 40),
            ("blk.0.attn_q.weight", 5),
        ]);
        assert_eq!(bytes_read_per_token(&gguf), 45);
    }

    #[test]
    fn reads_llama_bench_json() {
        let json = br#"[{"n_prompt": 512, "n_gen": 0, "avg_ts": 812.5},
                         {"n_prompt": 0, "n_gen": 128, "avg_ts": 97.25}]"#;
        let s = parse_llama_bench(json).unwrap();
        assert_eq!((s.pp, s.tg), (812.5, 97.25));
        assert!(parse_llama_bench(br#"[{"n_prompt": 512, "n_gen": 0, "avg_ts": 1.0}]"#).is_err());
    }

    #[test]
    fn four_bit_groups_fit_the_hidden_size() {
        let g = |hidden| variants(hidden)[3].recipe.clone().unwrap();
        assert!(
            g(576).contains("group_size: 64"),
            "SmolLM2: 576 = 4.5 × 128"
        );
        assert!(g(896).contains("group_size: 128"));
    }
}
