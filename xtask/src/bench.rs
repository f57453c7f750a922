//! `cargo xtask bench backends`: burn's CPU backends (flex, ndarray) against the runtime's own
//! f32 kernel (`runtime/examples/backend_bench.rs`), in a release build.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, workspace_root};

/// The cargo invocation `bench backends` runs (also printed, so the figures can be reproduced).
pub fn backends_args(threaded: bool) -> Vec<&'static str> {
    let feature = if threaded {
        "bench-threaded"
    } else {
        "bench-ndarray"
    };
    vec![
        "run",
        "--release",
        "-p",
        "lmq-runtime",
        "--example",
        "backend_bench",
        "--features",
        feature,
    ]
}

/// Builds (release; compiling burn takes a while the first time) and runs the backend bench.
pub fn backends(threaded: bool) -> Result<()> {
    let cargo = cargo();
    let args = backends_args(threaded);
    eprintln!("[xtask] cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(&args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("backend bench failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_example_with_its_feature() {
        assert_eq!(
            backends_args(false).join(" "),
            "run --release -p lmq-runtime --example backend_bench --features bench-ndarray"
        );
        assert!(backends_args(true).ends_with(&["bench-threaded"]));
        assert!(workspace_root()
            .join("runtime/examples/backend_bench.rs")
            .is_file());
    }
}
