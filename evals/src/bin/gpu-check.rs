//! `gpu-check`: the one program a lent GPU runs (`cargo xtask gpu-check` builds and stages
//! it). It checks the cubecl kernels against the CPU's scalar references, times the packed
//! GEMV against the GPU's memory bandwidth, and for each model computes wiki2 perplexity,
//! prefill and decode tokens/s on the CPU and on the GPU side by side, printing one table
//! last.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use clap::Parser;
use lmq_evals::perplexity::{perplexity, PplOptions};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::device::{run_on, DeviceSpec, OnBackend};
use lmq_runtime::gpu::{self, selftest, CudaDevice, Gpu};
use lmq_runtime::model::{DenseWeight, HostWeight, LinearBackend};
use lmq_runtime::sampling::argmax;
use rand::{Rng, SeedableRng};

/// The H200's HBM3e bandwidth by its datasheet, the denominator of "fraction of peak".
const PEAK_GBPS: f64 = 4800.0;

#[derive(Parser, Debug)]
#[command(name = "gpu-check")]
struct Args {
    /// Models to compare CPU against GPU (asset names, .gguf files, checkpoint dirs).
    #[arg(long, default_value = "smollm2")]
    model: Vec<String>,
    /// Text for perplexity.
    #[arg(long, default_value = "wiki2")]
    ppl: String,
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    #[arg(long, default_value_t = 20)]
    windows: usize,
    /// Greedy tokens decoded after a 128-token prompt.
    #[arg(long, default_value_t = 64)]
    decode: usize,
    #[arg(long, default_value_t = 0)]
    gpu: usize,
    /// Skip the kernel checks and bandwidth timing.
    #[arg(long)]
    no_kernels: bool,
    /// Skip the models (kernel checks and bandwidth only).
    #[arg(long)]
    no_models: bool,
    /// Run the models on the GPU only (the CPU figures are known from an earlier run).
    #[arg(long)]
    gpu_only: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// One model on one device.
#[derive(Debug, Clone, Default)]
struct Figures {
    ppl: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    greedy: Vec<u32>,
}

struct ModelJob<'a> {
    ckpt: &'a Checkpoint,
    ids: &'a [u32],
    args: &'a Args,
}

impl OnBackend for ModelJob<'_> {
    type Output = Result<Figures>;

    fn run<B: LinearBackend>(self, device: B::Device) -> Result<Figures> {
        let model = self.ckpt.load_model::<B>(&device)?;
        let opts = PplOptions {
            seqlen: self.args.seqlen,
            max_windows: Some(self.args.windows),
            through_decode: false,
        };
        // One window first: kernel compilation and allocation are not throughput.
        perplexity(
            &model,
            &self.ids[..self.args.seqlen],
            &PplOptions {
                seqlen: self.args.seqlen,
                max_windows: Some(1),
                through_decode: false,
            },
            |_, _| {},
        )?;
        let report = perplexity(&model, self.ids, &opts, |_, _| {})?;
        let prefill_tok_s = (report.windows * report.seqlen) as f64 / report.seconds;
        let prompt = &self.ids[..128];
        let mut greedy = Vec::new();
        let mut decode_tok_s = 0.0;
        for rep in 0..2 {
            let mut cache = model.new_cache(prompt.len() + self.args.decode + 1);
            let ids: Vec<i32> = prompt.iter().map(|&x| x as i32).collect();
            let input =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, prompt.len()]), &device);
            let mut next = argmax(&model.forward_last(input, Some(&mut cache)));
            let mut out = vec![next];
            let t0 = Instant::now();
            for _ in 1..self.args.decode {
                let input = Tensor::<B, 2, Int>::from_data(
                    TensorData::new(vec![next as i32], [1, 1]),
                    &device,
                );
                next = argmax(&model.forward_last(input, Some(&mut cache)));
                out.push(next);
            }
            if rep == 1 {
                decode_tok_s = (self.args.decode - 1) as f64 / t0.elapsed().as_secs_f64();
                greedy = out;
            }
        }
        Ok(Figures {
            ppl: report.ppl,
            prefill_tok_s,
            decode_tok_s,
            greedy,
        })
    }
}

/// The cache paths a server and Medusa decoding take, on one backend: three prompts
/// prefilled then two batched decode steps, and a Medusa tree after a prefix with the
/// accepted path kept and one more token. Returns all the logits, to compare CPU with GPU.
struct PathsJob<'a> {
    ckpt: &'a Checkpoint,
    ids: &'a [u32],
}

impl OnBackend for PathsJob<'_> {
    type Output = Result<Vec<f32>>;

    fn run<B: LinearBackend>(self, device: B::Device) -> Result<Vec<f32>> {
        use lmq_runtime::medusa::tree::Tree;
        let model = self.ckpt.load_model::<B>(&device)?;
        let ids = self.ids;
        let feed = |tokens: &[u32], cache: &mut lmq_runtime::model::KvCache| {
            let data: Vec<i32> = tokens.iter().map(|&x| x as i32).collect();
            let input =
                Tensor::<B, 2, Int>::from_data(TensorData::new(data, [1, tokens.len()]), &device);
            model.forward_last(input, Some(cache))
        };
        let mut out = Vec::new();
        let mut caches: Vec<_> = [5usize, 9, 13]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut c = model.new_growable_cache(4, 64);
                out.extend(feed(&ids[i * 20..i * 20 + n], &mut c));
                c
            })
            .collect();
        for step in 0..2 {
            let tokens = [ids[100 + step], ids[110 + step], ids[120 + step]];
            let mut refs: Vec<_> = caches.iter_mut().collect();
            let hidden = model.forward_decode_batch(&tokens, &mut refs);
            out.extend(
                model
                    .logits(hidden)
                    .into_data()
                    .into_vec::<f32>()
                    .expect("f32"),
            );
        }
        let tree = Tree::from_choices(&[&[0], &[1], &[0, 0], &[0, 1], &[1, 0], &[0, 0, 0]], 4)
            .map_err(anyhow::Error::msg)?;
        let tokens = tree.tokens(
            ids[16],
            &[
                ids[17..19].to_vec(),
                ids[19..21].to_vec(),
                ids[21..22].to_vec(),
            ],
        );
        let depths: Vec<usize> = tree.nodes.iter().map(|n| n.depth).collect();
        let mut cache = model.new_growable_cache(8, 64);
        out.extend(feed(&ids[..16], &mut cache));
        let hidden = model.forward_tree(&tokens, &depths, &tree.attention_mask(), &mut cache);
        out.extend(
            model
                .logits(hidden)
                .into_data()
                .into_vec::<f32>()
                .expect("f32"),
        );
        cache.keep_rows::<B>(16, &[0, 1, 3, 6]);
        out.extend(feed(&ids[30..31], &mut cache));
        Ok(out)
    }
}

/// Mean seconds of `f` over `iters` calls after two warm-ups, the GPU synchronized.
fn time_gpu(device: &CudaDevice, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    let _ = Gpu::sync(device);
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    let _ = Gpu::sync(device);
    t0.elapsed().as_secs_f64() / iters as f64
}

/// Decode-GEMV bandwidth: bytes of weight read per call over the time of a call, for an
/// 8192×8192 matrix (large enough to stream from HBM, not L2).
fn bandwidth(device: &CudaDevice) -> Vec<(String, f64, f64)> {
    let (n, k) = (8192usize, 8192usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let x = Tensor::<Gpu, 2>::from_data(TensorData::new(vec![0.01f32; k], [1, k]), device);
    let mut rows = Vec::new();
    for (label, bits, group) in [
        ("int4 g128 packed GEMV", 4u8, 128usize),
        ("int8 g128 packed GEMV", 8, 128),
    ] {
        let p = selftest::random_packed(&mut rng, bits, n, k, group, false);
        let bytes = (p.packed.len() * 4 + p.scale.len() * 8) as f64;
        let w = Gpu::upload(HostWeight::Packed(p.into()), device);
        let s = time_gpu(device, 50, || {
            let _ = Gpu::apply_linear(x.clone(), &w);
        });
        rows.push((label.to_owned(), s * 1e6, bytes / s / 1e9));
    }
    let w = Gpu::upload(
        HostWeight::Dense(DenseWeight::new(vec![0.001f32; n * k], n, k)),
        device,
    );
    let s = time_gpu(device, 20, || {
        let _ = Gpu::apply_linear(x.clone(), &w);
    });
    rows.push((
        "f32 dense (burn matmul)".into(),
        s * 1e6,
        (n * k * 4) as f64 / s / 1e9,
    ));
    rows
}

/// Time per call of a SmolLM2-sized linear (1536×576) at m = 1: launch overhead, not
/// bandwidth, is what a small model's decode pays.
fn small_call_us(device: &CudaDevice) -> Vec<(String, f64)> {
    let (n, k) = (1536usize, 576usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let x = Tensor::<Gpu, 2>::from_data(TensorData::new(vec![0.01f32; k], [1, k]), device);
    let mut out = Vec::new();
    let weights = [
        (
            "int4 g64 packed",
            HostWeight::Packed(selftest::random_packed(&mut rng, 4, n, k, 64, false).into()),
        ),
        (
            "f32 dense",
            HostWeight::Dense(DenseWeight::new(vec![0.001f32; n * k], n, k)),
        ),
    ];
    for (label, hw) in weights {
        let w = Gpu::upload(hw, device);
        let s = time_gpu(device, 500, || {
            let _ = Gpu::apply_linear(x.clone(), &w);
        });
        out.push((label.to_owned(), s * 1e6));
    }
    let a = Tensor::<Gpu, 3>::from_data(TensorData::new(vec![0.5f32; k], [1, 1, k]), device);
    let s = time_gpu(device, 500, || {
        let _ = a.clone() + a.clone();
    });
    out.push(("burn elementwise add [1, 576]".into(), s * 1e6));
    out
}

/// Greedy Medusa decoding (on the GPU: the device-resident loop, only ids to the host)
/// against plain greedy decoding, with seeded random heads: whether the outputs are equal,
/// tokens per step, and both rates.
struct MedusaJob<'a> {
    ckpt: &'a Checkpoint,
    ids: &'a [u32],
}

impl OnBackend for MedusaJob<'_> {
    type Output = Result<(bool, f64, f64, f64)>;

    fn run<B: LinearBackend>(self, device: B::Device) -> Result<(bool, f64, f64, f64)> {
        use lmq_runtime::medusa::tree::SMALL_CHOICES;
        use lmq_runtime::medusa::{generate_medusa, MedusaConfig, MedusaHeads, Tree};
        let model = self.ckpt.load_model::<B>(&device)?;
        let c = &model.config;
        let mut heads = MedusaHeads::zeros(MedusaConfig {
            num_heads: 4,
            num_layers: 1,
            hidden_size: c.hidden_size,
            token_input: false,
            recurrent: false,
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for b in heads.blocks.iter_mut().flatten() {
            b.weight
                .iter_mut()
                .for_each(|w| *w = rng.gen_range(-0.01f32..0.01));
        }
        let tree = Tree::from_choices(SMALL_CHOICES, 4).map_err(anyhow::Error::msg)?;
        let prompt = &self.ids[..64];
        let new = 48;
        let t0 = Instant::now();
        let plain =
            lmq_runtime::generate::generate(&model, prompt, new, Default::default(), &[], |_| {})?;
        let plain_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let (out, stats) = generate_medusa(&model, &heads, &tree, prompt, new, &[], |_| {})?;
        let medusa_s = t0.elapsed().as_secs_f64();
        Ok((
            out == plain,
            stats.generated as f64 / stats.steps.max(1) as f64,
            plain.len() as f64 / plain_s,
            out.len() as f64 / medusa_s,
        ))
    }
}

fn run(args: Args) -> Result<()> {
    let t_start = Instant::now();
    let device = gpu::open(args.gpu)?;
    println!(
        "GPU cuda:{} opened in {:.1} s",
        args.gpu,
        t_start.elapsed().as_secs_f64()
    );
    let mut failed = 0;
    let mut bw = Vec::new();
    if !args.no_kernels {
        let t0 = Instant::now();
        let checks = selftest::run_all(&device);
        println!("\n| kernel check | rel. error | tolerance | |\n|---|---|---|---|");
        for c in &checks {
            println!(
                "| {} | {:.2e} | {:.0e} | {} |",
                c.name,
                c.rel_err,
                c.tolerance,
                if c.passed() { "ok" } else { "FAIL" }
            );
        }
        failed = checks.iter().filter(|c| !c.passed()).count();
        println!(
            "{} checks, {failed} failed, {:.1} s",
            checks.len(),
            t0.elapsed().as_secs_f64()
        );
        bw = bandwidth(&device);
        println!("\n| 1536×576 linear, m=1 | µs per call |\n|---|---|");
        for (label, us) in small_call_us(&device) {
            println!("| {label} | {us:.1} |");
        }
        println!("\n| decode GEMV 8192×8192, m=1 | µs | GB/s | of {PEAK_GBPS:.0} GB/s |\n|---|---|---|---|");
        for (label, us, gbps) in &bw {
            println!(
                "| {label} | {us:.1} | {gbps:.0} | {:.1}% |",
                100.0 * gbps / PEAK_GBPS
            );
        }
    }
    let mut table = Vec::new();
    let models: &[String] = if args.no_models { &[] } else { &args.model };
    for spec in models {
        let t0 = Instant::now();
        let ckpt = Checkpoint::open(spec)?;
        let text_path: PathBuf = lmq_evals::text::resolve(&args.ppl);
        let text = std::fs::read_to_string(&text_path)
            .with_context(|| format!("{}: cannot read", text_path.display()))?;
        let ids = ckpt.tokenizer.encode(&text, false)?;
        let cpu = run_on(
            DeviceSpec::Cpu,
            PathsJob {
                ckpt: &ckpt,
                ids: &ids,
            },
        )??;
        let gpu = run_on(
            DeviceSpec::Cuda(args.gpu),
            PathsJob {
                ckpt: &ckpt,
                ids: &ids,
            },
        )??;
        let scale = cpu.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let diff = cpu
            .iter()
            .zip(&gpu)
            .fold(0.0f32, |a, (c, g)| a.max((c - g).abs()));
        println!(
            "{spec}: batched decode + Medusa tree + keep_rows logits, GPU vs CPU: max |Δ| {diff:.2e} (rel. {:.2e}, {} logits)",
            diff / scale,
            cpu.len()
        );
        let (equal, per_step, plain_tps, medusa_tps) = run_on(
            DeviceSpec::Cuda(args.gpu),
            MedusaJob {
                ckpt: &ckpt,
                ids: &ids,
            },
        )??;
        println!(
            "{spec} on the GPU: Medusa tree decoding (device-resident loop, random heads) equal to \
             plain greedy: {equal}; {per_step:.2} tokens/step; plain {plain_tps:.1} tok/s, \
             Medusa {medusa_tps:.1} tok/s"
        );
        let mut figures = Vec::new();
        let devices: &[DeviceSpec] = if args.gpu_only {
            &[DeviceSpec::Cuda(args.gpu)]
        } else {
            &[DeviceSpec::Cpu, DeviceSpec::Cuda(args.gpu)]
        };
        for &spec_dev in devices {
            let f = run_on(
                spec_dev,
                ModelJob {
                    ckpt: &ckpt,
                    ids: &ids,
                    args: &args,
                },
            )??;
            println!(
                "{spec} on {spec_dev}: ppl {:.4}, prefill {:.0} tok/s, decode {:.1} tok/s",
                f.ppl, f.prefill_tok_s, f.decode_tok_s
            );
            figures.push(f);
        }
        if figures.len() == 1 {
            figures.insert(0, Figures::default());
        }
        let (c, g) = (&figures[0], &figures[1]);
        let same = c
            .greedy
            .iter()
            .zip(&g.greedy)
            .take_while(|(a, b)| a == b)
            .count();
        table.push((spec.clone(), c.clone(), g.clone(), same));
        println!("{spec}: {:.1} s", t0.elapsed().as_secs_f64());
    }
    println!(
        "\n| model | ppl CPU | ppl GPU | Δ | prefill tok/s CPU | GPU | decode tok/s CPU | GPU | greedy tokens equal |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (spec, c, g, same) in &table {
        println!(
            "| {spec} | {:.4} | {:.4} | {:+.3}% | {:.0} | {:.0} | {:.1} | {:.1} | {same}/{} |",
            c.ppl,
            g.ppl,
            100.0 * (g.ppl / c.ppl - 1.0),
            c.prefill_tok_s,
            g.prefill_tok_s,
            c.decode_tok_s,
            g.decode_tok_s,
            c.greedy.len()
        );
    }
    if let Some((label, _, gbps)) = bw.first() {
        println!(
            "decode bandwidth: {label} {gbps:.0} GB/s = {:.1}% of {PEAK_GBPS:.0} GB/s",
            100.0 * gbps / PEAK_GBPS
        );
    }
    println!(
        "wiki2 ppl: {} windows × {}; total {:.1} s",
        args.windows,
        args.seqlen,
        t_start.elapsed().as_secs_f64()
    );
    anyhow::ensure!(failed == 0, "{failed} kernel checks failed");
    Ok(())
}
