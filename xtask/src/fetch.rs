//! `cargo xtask fetch` / `list`: thin wrappers over `lmq_runtime::assets`.

use std::time::Instant;

use anyhow::{bail, Result};
use lmq_runtime::assets::{self, Asset};

/// Expands `default` / `all` and parses names, keeping first-seen order without duplicates.
pub fn resolve(names: &[String]) -> Result<Vec<Asset>> {
    let mut out: Vec<Asset> = Vec::new();
    let mut push = |a: Asset| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    for name in names {
        match name.trim().to_ascii_lowercase().as_str() {
            "all" => Asset::ALL.into_iter().for_each(&mut push),
            "default" => Asset::DEFAULT.into_iter().for_each(&mut push),
            _ => push(name.parse::<Asset>()?),
        }
    }
    if out.is_empty() {
        out.extend(Asset::DEFAULT);
    }
    Ok(out)
}

/// Ensures each asset, printing `NAME PATH` (or the path alone) to stdout as each is ready.
/// Keeps going after a failure so one vanished package does not block the rest.
pub fn fetch(names: &[String], paths_only: bool) -> Result<()> {
    let wanted = resolve(names)?;
    eprintln!("[xtask] cache: {}", assets::cache_dir().display());
    let mut failed = Vec::new();
    for asset in wanted {
        let t = Instant::now();
        match assets::ensure(asset) {
            Ok(path) => {
                if paths_only {
                    println!("{}", path.display());
                } else {
                    println!("{:<14} {}", asset.name(), path.display());
                }
                eprintln!("[xtask] {asset}: ok in {:.1}s", t.elapsed().as_secs_f64());
            }
            Err(e) => {
                eprintln!("[xtask] {asset}: FAILED: {e}");
                failed.push(asset.name());
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not fetch: {}", failed.join(", "));
    }
    Ok(())
}

/// Prints every asset with its cache state.
pub fn list() {
    println!("cache: {}", assets::cache_dir().display());
    for asset in Asset::ALL {
        let state = if assets::cached(asset).is_some() {
            "cached "
        } else {
            "missing"
        };
        println!(
            "{:<14} {state} {}  ({})",
            asset.name(),
            asset.path().display(),
            asset.description()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn resolves_groups_and_names() {
        assert_eq!(resolve(&s(&[])).unwrap(), Asset::DEFAULT.to_vec());
        assert_eq!(resolve(&s(&["default"])).unwrap(), Asset::DEFAULT.to_vec());
        assert_eq!(resolve(&s(&["all"])).unwrap(), Asset::ALL.to_vec());
        assert_eq!(
            resolve(&s(&["mt-bench", "smollm2", "default"])).unwrap(),
            vec![Asset::MtBench, Asset::SmolLm2, Asset::LlamaCppSource]
        );
        assert!(resolve(&s(&["gpt-5"])).is_err());
    }
}
