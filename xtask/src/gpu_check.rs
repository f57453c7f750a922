//! `cargo xtask gpu-check`: builds the CUDA binaries and runs `xtask/gpu-check.sh` — here when
//! this machine has an NVIDIA GPU, or, with `--stage`, packs them with the model and text into
//! `.gpu/p1, p2, …` (each under the device tool's 64 MiB per call) for a lent GPU machine that
//! has no Rust toolchain and no network.
//!
//! The kernels need no build-time CUDA: cubecl compiles them with NVRTC when first launched,
//! for the GPU it finds (`sm_90a` on an H100/H200). The CUDA version the driver bindings are
//! built against is `CUDARC_CUDA_VERSION` (default 13000 here, the lent machines' CUDA 13.0).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, workspace_root};

/// Bytes per staged part: the device tool carries 64 MiB per call with the working tree.
const PART_BYTES: u64 = 60 << 20;
/// Where the CUDA release build goes, under the workspace root (its own target dir: the CUDA
/// features rebuild the runtime, and a CPU build beside it should not be invalidated).
const TARGET: &str = "target/gpu";
/// The reference calibration windows (128 × 512 HellaSwag tokens), 256 KiB.
const CALIB: &str = "calib-smollm2-hellaswag-128x512-seed0.i32";

fn build(root: &Path, cuda_version: &str) -> Result<()> {
    let status = Command::new(cargo())
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--features",
            "lmq-evals/cuda,lmq-quant/cuda",
            "-p",
            "lmq-evals",
            "-p",
            "lmq-quant",
        ])
        .args([
            "--bin",
            "gpu-check",
            "--bin",
            "evaluate",
            "--bin",
            "quantize",
        ])
        .env("CUDARC_CUDA_VERSION", cuda_version)
        .env("CARGO_TARGET_DIR", root.join(TARGET))
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .status()
        .context("running cargo build (cuda)")?;
    if !status.success() {
        bail!("cargo build --features cuda failed");
    }
    Ok(())
}

fn has_gpu() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// Builds, then runs the check here (a GPU present) or stages it (`stage`).
pub fn run(stage: bool, cuda_version: &str) -> Result<()> {
    let root = workspace_root();
    build(&root, cuda_version)?;
    if stage {
        return stage_parts(&root);
    }
    if !has_gpu() {
        bail!("no NVIDIA GPU here (nvidia-smi -L): use --stage and run it where one is lent");
    }
    stage_parts(&root)?;
    let status = Command::new("bash")
        .current_dir(&root)
        .args(["xtask/gpu-check.sh", "all"])
        .status()?;
    if !status.success() {
        bail!("xtask/gpu-check.sh failed");
    }
    Ok(())
}

fn stripped(src: &Path, dir: &Path) -> Result<PathBuf> {
    let name = src.file_name().context("binary name")?;
    let dst = dir.join(name);
    let status = Command::new("strip")
        .arg("-o")
        .arg(&dst)
        .arg(src)
        .status()
        .context("running strip")?;
    if !status.success() {
        bail!("strip {} failed", src.display());
    }
    Ok(dst)
}

fn xz(args: &[&str], cwd: &Path) -> Result<()> {
    let status = Command::new(args[0])
        .args(&args[1..])
        .current_dir(cwd)
        .status()
        .with_context(|| format!("running {}", args[0]))?;
    if !status.success() {
        bail!("{} failed", args.join(" "));
    }
    Ok(())
}

/// Writes `.gpu/p1`: the three binaries (stripped, tar.xz), WikiText-2 (xz) and the
/// reference calibration windows, then the
/// SmolLM2 GGUF in chunks filling p1 up to [`PART_BYTES`] and p2, p3, … after it (`.gpu`
/// under the workspace root `ws`).
fn stage_parts(ws: &Path) -> Result<()> {
    let root = &ws.join(".gpu");
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let p1 = root.join("p1");
    fs::create_dir_all(&p1)?;
    let bins = root.join("bins");
    fs::create_dir_all(&bins)?;
    for b in [
        format!("{TARGET}/release/gpu-check"),
        format!("{TARGET}/release/evaluate"),
        format!("{TARGET}/release/quantize"),
    ] {
        stripped(&ws.join(b), &bins)?;
    }
    xz(
        &[
            "tar",
            "-cJf",
            "../p1/bins.tar.xz",
            "gpu-check",
            "evaluate",
            "quantize",
        ],
        &bins,
    )?;
    fs::remove_dir_all(&bins)?;
    let wiki = ws.join("../shared/data/wikitext-2-raw/wiki.test.raw");
    fs::copy(&wiki, p1.join("wiki.test.raw"))
        .with_context(|| format!("copying {}", wiki.display()))?;
    xz(&["xz", "-9", "wiki.test.raw"], &p1)?;
    // The GPTQ comparison's calibration windows (`gpu-check.sh quant`).
    let calib = ws.join(format!("../shared/reference/{CALIB}"));
    fs::copy(&calib, p1.join(CALIB)).with_context(|| format!("copying {}", calib.display()))?;
    let model = lmq_runtime::assets::ensure(lmq_runtime::assets::Asset::SmolLm2)
        .context("fetching smollm2")?;
    let data = fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
    let used: u64 = fs::read_dir(&p1)?
        .map(|e| e.map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)))
        .sum::<std::io::Result<u64>>()?;
    let mut room = PART_BYTES.saturating_sub(used) as usize;
    let (mut offset, mut part, mut chunk) = (0usize, 1usize, 0usize);
    while offset < data.len() {
        let n = room.min(data.len() - offset);
        let dir = root.join(format!("p{part}"));
        fs::create_dir_all(&dir)?;
        let mut f = fs::File::create(dir.join(format!("smollm2.gguf.part{chunk:02}")))?;
        f.write_all(&data[offset..offset + n])?;
        offset += n;
        chunk += 1;
        part += 1;
        room = PART_BYTES as usize;
    }
    println!("staged in {}:", root.display());
    for e in fs::read_dir(root)? {
        let dir = e?.path();
        let size: u64 = fs::read_dir(&dir)?
            .map(|f| f.map(|f| f.metadata().map(|m| m.len()).unwrap_or(0)))
            .sum::<std::io::Result<u64>>()?;
        println!(
            "  {} {:.1} MiB",
            dir.display(),
            size as f64 / (1 << 20) as f64
        );
    }
    println!(
        "on the GPU machine, one call per part (carry .gpu/pN), the last one running:\n  \
         bash xtask/gpu-check.sh all    (or `kernels` with p1 alone, then `models`)"
    );
    Ok(())
}
