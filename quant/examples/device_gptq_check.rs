//! The device path of `quantize --device` (Hessian sums and GPTQ's column loop as burn tensor
//! operations) run on the CPU backend against the host pipeline, on a real model: how many
//! weights differ and how far the per-linear output errors move. The GPU run of the same
//! code is `xtask/gpu-check.sh quant`.
//!
//! `cargo run --release -p lmq-quant --example device_gptq_check -- [MODEL [RECIPE [WINDOWS]]]`
//! (default: smollm2, recipes/gptq-w4g64-llmcompressor.yaml, its first 8 windows).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use lmq_quant::calibrated::calibration_set;
use lmq_quant::device::BurnDevice;
use lmq_quant::pipeline::{self, CalibratedModel, PipelineOptions};
use lmq_quant::plan::QuantPlan;
use lmq_quant::recipe::Recipe;
use lmq_runtime::checkpoint::Checkpoint;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map_or("smollm2", String::as_str);
    let recipe = PathBuf::from(
        args.get(1)
            .map_or("recipes/gptq-w4g64-llmcompressor.yaml", String::as_str),
    );
    let windows: usize = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let ckpt = Checkpoint::open(model)?;
    let recipe = Recipe::from_file(&recipe)?;
    let plan = QuantPlan::from_recipe(&recipe, &*ckpt.weights, ckpt.config.tie_word_embeddings)?;
    let calib = calibration_set(&ckpt, &recipe)?;
    let win = &calib.windows[..windows.min(calib.windows.len())];
    let run = |opts: PipelineOptions| -> Result<(CalibratedModel, f64)> {
        let t0 = Instant::now();
        let m = pipeline::run(&ckpt.config, &*ckpt.weights, &plan, win, opts, &mut |_| {})?;
        Ok((m, t0.elapsed().as_secs_f64()))
    };
    let (host, host_s) = run(PipelineOptions::default())?;
    let device = BurnDevice::<lmq_runtime::Cpu>::new(Default::default(), "flex");
    let (dev, dev_s) = run(PipelineOptions {
        device: Some(Arc::new(device)),
        ..PipelineOptions::default()
    })?;
    let (mut differ, mut total) = (0usize, 0usize);
    let mut names: Vec<&String> = host.packed.keys().collect();
    names.sort();
    for name in names {
        let (a, b) = (
            host.packed[name].dequantize_ref(),
            dev.packed[name].dequantize_ref(),
        );
        let d = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        if name.starts_with("model.layers.0.") {
            println!(
                "{name}: {:.3}% of weights differ",
                100.0 * d as f64 / a.len() as f64
            );
        }
        differ += d;
        total += a.len();
    }
    let errors = |m: &CalibratedModel| -> Vec<f64> {
        m.layers
            .iter()
            .flat_map(|l| &l.linears)
            .filter_map(|r| r.rel_output_error)
            .collect()
    };
    let (eh, ed) = (errors(&host), errors(&dev));
    let worst = eh
        .iter()
        .zip(&ed)
        .map(|(a, b)| (a - b).abs() / a)
        .fold(0.0f64, f64::max);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "{} windows x {} tokens: host {host_s:.1} s, device (flex) {dev_s:.1} s",
        win.len(),
        calib.seqlen
    );
    println!(
        "weights differing: {differ} of {total} ({:.3}%); per-linear output error: mean host \
         {:.4e}, device {:.4e}, largest relative difference {worst:.2e}",
        100.0 * differ as f64 / total as f64,
        mean(&eh),
        mean(&ed)
    );
    Ok(())
}
