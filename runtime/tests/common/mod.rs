//! The real SmolLM2 checkpoint and model, loaded once per test binary.

use std::sync::OnceLock;

use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::model::Llama;
use lmq_runtime::Cpu;

pub struct Fixture {
    pub ckpt: Checkpoint,
    pub model: Llama<Cpu>,
}

/// SmolLM2-135M (fetched into the cache on first use).
pub fn smollm2() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).expect("SmolLM2 asset")).unwrap();
        let model = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
        Fixture { ckpt, model }
    })
}
