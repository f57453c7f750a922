//! burn CPU backends (flex, ndarray) against the runtime's own f32 kernel, on this machine.
//!
//! `cargo xtask bench backends` (or `cargo run --release -p lmq-runtime --example backend_bench
//! --features bench-ndarray`). Add `--threaded` to the xtask (feature `bench-threaded`) to
//! build flex with its `rayon`/`simd` features and ndarray with `multi-threads`/`simd`; the
//! workspace pin (`default-features = false, features = ["std", "flex"]`) has neither.
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

/// Best wall time of `iters` runs after `warm` unmeasured ones.
fn best(warm: usize, iters: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..warm {
        f();
    }
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
    /// GEMV: `x` `[1, GK]`, `w` `[GK, GN]` (k×n) and `wt` = wᵀ `[GN, GK]` (n×k, checkpoint layout).
    x: Vec<f32>,
    w: Vec<f32>,
    wt: Vec<f32>,
}

#[derive(Default, Clone, Copy)]
struct Times {
    matmul: Option<Duration>,
    gemv_kn: Option<Duration>,
    gemv_nk_view: Option<Duration>,
}

/// Max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn burn_times<B: Backend>(inp: &Inputs, want_mm: &[f32], want_gemv: &[f32]) -> Times {
    let dev = B::Device::default();
    let t2 = |v: &[f32], r: usize, c: usize| {
        Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [r, c]), &dev)
    };

    let a = t2(&inp.a, MM, MM);
    let b = t2(&inp.b, MM, MM);
    let x = t2(&inp.x, 1, GK);
    let w = t2(&inp.w, GK, GN);
    // The checkpoint layout [n, k] seen as [k, n] through a transposed view (no copy).
    let w_view = t2(&inp.wt, GN, GK).transpose();

    // Correctness first (also the first warm-up).
    let check = |got: Tensor<B, 2>, want: &[f32], what: &str| {
        let got = got.into_data().to_vec::<f32>().unwrap();
        let e = rel_err(&got, want);
        assert!(e < 1e-4, "{what}: relative error {e}");
    };
    check(a.clone().matmul(b.clone()), want_mm, "matmul");
    check(x.clone().matmul(w.clone()), want_gemv, "gemv [k,n]");
    check(
        x.clone().matmul(w_view.clone()),
        want_gemv,
        "gemv [n,k]ᵀ view",
    );

    // Eager backends: the op has run when `matmul` returns; `black_box` keeps the result.
    Times {
        matmul: Some(best(2, 10, || {
            black_box(a.clone().matmul(b.clone()));
        })),
        gemv_kn: Some(best(20, 200, || {
            black_box(x.clone().matmul(w.clone()));
        })),
        gemv_nk_view: Some(best(20, 200, || {
            black_box(x.clone().matmul(w_view.clone()));
        })),
    }
}

fn lmq_times(inp: &Inputs, want_mm: &[f32], want_gemv: &[f32]) -> Times {
    // matmul_f32_nt takes the weight as [n, k]: bᵀ and wᵀ.
    assert!(rel_err(&matmul_f32_nt(&inp.a, &inp.bt, MM, MM, MM), want_mm) < 1e-4);
    assert!(rel_err(&matmul_f32_nt(&inp.x, &inp.wt, 1, GK, GN), want_gemv) < 1e-4);
    Times {
        matmul: Some(best(2, 10, || {
            black_box(matmul_f32_nt(&inp.a, &inp.bt, MM, MM, MM));
        })),
        gemv_kn: None,
        gemv_nk_view: Some(best(20, 200, || {
            black_box(matmul_f32_nt(&inp.x, &inp.wt, 1, GK, GN));
        })),
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
    let x = data(GK, 3);
    let w = data(GK * GN, 4);
    let inp = Inputs {
        bt: transpose(&b, MM, MM),
        wt: transpose(&w, GK, GN),
        a,
        b,
        x,
        w,
    };
    // References from gemm's blocked kernel (through our wrapper), checked against the plain
    // definition on a slice in the runtime's unit tests.
    let want_mm = matmul_f32_nt(&inp.a, &inp.bt, MM, MM, MM);
    let want_gemv = lmq_runtime::kernels::matmul_f32_nt_ref(&inp.x, &inp.wt, 1, GK, GN);

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
        "workspace pin: flex and ndarray without rayon/simd features (feature bench-ndarray)"
    };
    println!(
        "rayon threads: {}; burn 0.21.0 {config}\n",
        rayon::current_num_threads()
    );
    println!("| f32, best of N after warm-up | burn flex | burn ndarray | lmq `matmul_f32_nt` |");
    println!("|---|---|---|---|");
    println!(
        "| matmul {MM}×{MM}×{MM} | {} | {} | {} |",
        mm(flex.matmul),
        mm(ndarray.matmul),
        mm(lmq.matmul)
    );
    println!(
        "| GEMV [1,{GK}]×[{GK},{GN}], weight contiguous [k,n] | {} | {} | {} |",
        gv(flex.gemv_kn),
        gv(ndarray.gemv_kn),
        gv(lmq.gemv_kn)
    );
    println!(
        "| GEMV, weight [n,k] (transposed view; lmq: native [n,k]) | {} | {} | {} |",
        gv(flex.gemv_nk_view),
        gv(ndarray.gemv_nk_view),
        gv(lmq.gemv_nk_view)
    );
}
