//! The cubecl kernels against the CPU's scalar references (`lmq_runtime::gpu::selftest`), on
//! a real GPU: `LMQ_GPU=1 cargo test -p lmq-runtime --features cuda --test gpu_kernels`.
//! Without `LMQ_GPU` the test says it skipped (CI has no GPU, and cubecl's CPU runtime needs
//! an LLVM download that offline machines cannot do); `gpu-check` runs the same checks.
#![cfg(feature = "cuda")]

use lmq_runtime::gpu::{open, selftest};

#[test]
fn kernels_match_scalar_references() {
    if std::env::var_os("LMQ_GPU").is_none() {
        eprintln!("skipped: set LMQ_GPU=1 on a machine with an NVIDIA GPU");
        return;
    }
    let device = open(0).expect("LMQ_GPU is set but no GPU opens");
    let checks = selftest::run_all(&device);
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}
