//! burn CPU backends (flex, ndarray) against the runtime's own f32 kernel, on this machine.
//!
//! `cargo xtask bench backends` (or `cargo run --release -p lmq-runtime --example backend_bench
//! --features bench-ndarray`). Add `--threaded` to the xtask (feature `bench-threaded`) to
//! build flex with its `rayon`/`simd` features and ndarray with `multi-threads`/`simd`; the
//! workspace pin (`default-features = false, features = ["std", "flex"]`) has neither.
//!
//! Rows: f32 matmul 1024³; decode GEMV `[1,2048]×[2048,2048]` with the weight contiguous
//! `[k,n]` and as a transposed view of the checkpoint layout `[n,k]` (the runtime's kernel takes
//! `[n,k]` natively), each once with one weight (L3-resident) and once cycling through
//! `STREAM` weights (DRAM).
//!
//! Every case: a few warm-up runs, then the best of N. Work on the global rayon pool, sized to
//! 2 threads (`LMQ_BENCH_THREADS` overrides). Output: one markdown table on stdout.

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::prelude::*;
use lmq_runtime::kernels::matmul_f32_nt;

/// Matmul `[M, K] × [K, N]`.
const MM: usize = 1024;
/// Decode GEMV `[1, K] × [K, N]`.
const GK: usize = 2048;
const GN: usize = 2048;
/// Distinct GEMV weights cycled through in the "streamed" rows: 4 × 16 MiB, more than this
/// machine's 32 MiB L3, so each call reads its weight from DRAM as decode over a real model
/// does. The single-weight rows re-read one 16 MiB weight, which stays in L3.
const STREAM: usize = 4;

/// Deterministic values in [-1, 1).
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Best wall time after a warm-up (at least 3 runs and 50 ms), over N runs with N chosen for
/// about 1.5 s of work (10 ≤ N ≤ 300): the minimum is what a quiet machine gives, and this
/// machine's two cores are shared.
fn best(mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    let mut runs = 0u32;
    while runs < 3 || t.elapsed() < Duration::from_millis(50) {
        f();
        runs += 1;
    }
    let per_run = t.elapsed() / runs;
    let iters = (1.5 / per_run.as_secs_f64()).clamp(10.0, 300.0) as usize;
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

struct Inputs {
    /// Matmul operands: `a` `[MM, MM]`, `b` `[MM, MM]` (k×n) and `bt` = bᵀ (n×k).
    a: Vec<f32>,
    b: Vec<f32>,
    bt: Vec<f32>,
    /// GEMV: `x` `[1, GK]`; `STREAM` weights `w[i]` `[GK, GN]` (k×n) and `wt[i]` = w[i]ᵀ
    /// `[GN, GK]` (n×k, the checkpoint layout). The results are checked for `w[0]`.
    x: Vec<f32>,
    w: Vec<Vec<f32>>,
    wt: Vec<Vec<f32>>,
}

/// One backend's column; `None`: not applicable.
#[derive(Default, Clone, Copy)]
struct Times {
    matmul: Option<Duration>,
    gemv_kn: Option<Duration>,
    gemv_nk: Option<Duration>,
    gemv_kn_streamed: Option<Duration>,
    gemv_nk_streamed: Option<Duration>,
}

/// Max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Times `f(i)` for i = 0, 1, 2, ... mod `STREAM`.
fn best_cycling(mut f: impl FnMut(usize)) -> Duration {
    let mut i = 0;
    best(|| {
        f(i % STREAM);
        i += 1;
    })
}

fn burn_times<B: Backend>(inp: &Inputs, want_mm: &[f32], want_gemv: &[f32]) -> Times {
    let dev = B::Device::default();
    let t2 = |v: &[f32], r: usize, c: usize| {
        Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [r, c]), &dev)
    };

    let a = t2(&inp.a, MM, MM);
    let b = t2(&inp.b, MM, MM);
    let x = t2(&inp.x, 1, GK);
    let w: Vec<_> = inp.w.iter().map(|w| t2(w, GK, GN)).collect();
    // The checkpoint layout [n, k] seen as [k, n] through a transposed view (no copy).
    let w_view: Vec<_> = inp.wt.iter().map(|wt| t2(wt, GN, GK).transpose()).collect();

    // Correctness first.
    let check = |got: Tensor<B, 2>, want: &[f32], what: &str| {
        let got = got.into_data().to_vec::<f32>().unwrap();
        let e = rel_err(&got, want);
        assert!(e < 1e-4, "{what}: relative error {e}");
    };
    check(a.clone().matmul(b.clone()), want_mm, "matmul");
    check(x.clone().matmul(w[0].clone()), want_gemv, "gemv [k,n]");
    check(
        x.clone().matmul(w_view[0].clone()),
        want_gemv,
        "gemv [n,k] view",
    );

    // Eager backends: the op has run when `matmul` returns; `black_box` keeps the result.
    Times {
        matmul: Some(best(|| {
            black_box(a.clone().matmul(b.clone()));
        })),
        gemv_kn: Some(best(|| {
            black_box(x.clone().matmul(w[0].clone()));
        })),
        gemv_nk: Some(best(|| {
            black_box(x.clone().matmul(w_view[0].clone()));
        })),
        gemv_kn_streamed: Some(best_cycling(|i| {
            black_box(x.clone().matmul(w[i].clone()));
        })),
        gemv_nk_streamed: Some(best_cycling(|i| {
            black_box(x.clone().matmul(w_view[i].clone()));
        })),
    }
}

fn lmq_times(inp: &Inputs, want_mm: &[f32], want_gemv: &[f32]) -> Times {
    // matmul_f32_nt takes the weight as [n, k]: bᵀ and wᵀ.
    let e = rel_err(&matmul_f32_nt(&inp.a, &inp.bt, MM, MM, MM), want_mm);
    assert!(e < 1e-4, "lmq matmul: relative error {e}");
    let e = rel_err(&matmul_f32_nt(&inp.x, &inp.wt[0], 1, GK, GN), want_gemv);
    assert!(e < 1e-4, "lmq gemv: relative error {e}");
    Times {
        matmul: Some(best(|| {
            black_box(matmul_f32_nt(&inp.a, &inp.bt, MM, MM, MM));
        })),
        gemv_nk: Some(best(|| {
            black_box(matmul_f32_nt(&inp.x, &inp.wt[0], 1, GK, GN));
        })),
        gemv_nk_streamed: Some(best_cycling(|i| {
            black_box(matmul_f32_nt(&inp.x, &inp.wt[i], 1, GK, GN));
        })),
        ..Times::default()
    }
}

fn main() {
    let threads: usize = std::env::var("LMQ_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("global rayon pool");
    // ndarray's `matrixmultiply` (with `multi-threads`) keeps its own threads; same count.
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", threads.to_string());
    }

    let a = data(MM * MM, 1);
    let b = data(MM * MM, 2);
    let w: Vec<_> = (0..STREAM).map(|i| data(GK * GN, 10 + i as u64)).collect();
    let inp = Inputs {
        bt: transpose(&b, MM, MM),
        wt: w.iter().map(|w| transpose(w, GK, GN)).collect(),
        a,
        b,
        x: data(GK, 3),
        w,
    };
    // The references: the plain f64-accumulated definition for the GEMV; for the matmul (too
    // slow that way) gemm's blocked kernel through our wrapper, which the runtime's unit tests
    // check against the definition. Every burn result is compared with them.
    let want_gemv = lmq_runtime::kernels::matmul_f32_nt_ref(&inp.x, &inp.wt[0], 1, GK, GN);
    let want_mm = matmul_f32_nt(&inp.a, &inp.bt, MM, MM, MM);

    let flex = burn_times::<burn::backend::Flex>(&inp, &want_mm, &want_gemv);
    let ndarray = burn_times::<burn::backend::NdArray<f32>>(&inp, &want_mm, &want_gemv);
    let lmq = lmq_times(&inp, &want_mm, &want_gemv);

    let flops = 2.0 * (MM * MM * MM) as f64;
    let weight_bytes = (GK * GN * std::mem::size_of::<f32>()) as f64;
    let mm = |t: Option<Duration>| match t {
        Some(t) => format!(
            "{:.1} GFLOP/s ({:.1} ms)",
            flops / t.as_secs_f64() / 1e9,
            t.as_secs_f64() * 1e3
        ),
        None => "n/a".into(),
    };
    let gv = |t: Option<Duration>| match t {
        Some(t) => format!(
            "{:.3} ms ({:.1} GB/s)",
            t.as_secs_f64() * 1e3,
            weight_bytes / t.as_secs_f64() / 1e9
        ),
        None => "n/a (takes [n,k])".into(),
    };

    let config = if cfg!(feature = "bench-threaded") {
        "flex +rayon +simd, ndarray +multi-threads +simd (feature bench-threaded)"
    } else {
        "as the workspace pins it: flex and ndarray without their rayon/simd features \
         (feature bench-ndarray)"
    };
    println!(
        "rayon threads: {}; burn 0.21.0 {config}\n",
        rayon::current_num_threads()
    );
    println!("| f32, best of N after warm-up | burn flex | burn ndarray | lmq `matmul_f32_nt` |");
    println!("|---|---|---|---|");
    let row = |what: String,
               cell: &dyn Fn(Option<Duration>) -> String,
               pick: fn(&Times) -> Option<Duration>| {
        println!(
            "| {what} | {} | {} | {} |",
            cell(pick(&flex)),
            cell(pick(&ndarray)),
            cell(pick(&lmq))
        );
    };
    row(format!("matmul {MM}×{MM}×{MM}"), &mm, |t| t.matmul);
    let g = format!("GEMV [1,{GK}]×[{GK},{GN}]");
    row(format!("{g}, weight [k,n] contiguous"), &gv, |t| t.gemv_kn);
    row(
        format!("{g}, weight [n,k] (burn: transposed view)"),
        &gv,
        |t| t.gemv_nk,
    );
    let s = format!("{STREAM} weights cycled, {} MiB > L3", STREAM * 16);
    row(format!("{g}, [k,n], {s}"), &gv, |t| t.gemv_kn_streamed);
    row(format!("{g}, [n,k], {s}"), &gv, |t| t.gemv_nk_streamed);
}
