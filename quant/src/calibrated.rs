//! `quantize` for recipes with calibrated passes (GPTQ): calibration windows from the
//! recipe's source, the layer-sequential pipeline, then the packed checkpoint with a
//! `quantize-report.json` of per-linear errors beside it.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use lmq_calibration::{CalibrationSet, Source};
use lmq_runtime::checkpoint::Checkpoint;
use serde_json::json;

use crate::convert::ConvertOptions;
use crate::packed_checkpoint::{write_packed_checkpoint, QuantSummary};
use crate::pipeline::{self, CalibratedModel, PipelineEvent, PipelineOptions};
use crate::plan::QuantPlan;
use crate::recipe::{CalibrationSource, Recipe};

/// The calibration crate's source for a recipe's `calibration.source`.
pub fn source_of(s: &CalibrationSource) -> Source {
    match s {
        CalibrationSource::HellaSwag => Source::HellaSwag,
        CalibrationSource::BoolQ => Source::BoolQ,
        CalibrationSource::MtBench => Source::MtBench,
        CalibrationSource::Text(p) => Source::Text(p.clone()),
        CalibrationSource::Jsonl { path, field } => Source::Jsonl {
            path: path.clone(),
            field: field.clone(),
        },
        CalibrationSource::Tokens(p) => Source::Tokens(p.clone()),
    }
}

/// Builds the recipe's calibration windows with the checkpoint's tokenizer.
pub fn calibration_set(ckpt: &Checkpoint, recipe: &Recipe) -> Result<CalibrationSet> {
    let spec = recipe.calibration.as_ref().ok_or_else(|| {
        anyhow!(
            "{}: the recipe has calibrated passes but no `calibration:` section",
            recipe.path.display()
        )
    })?;
    lmq_calibration::build(
        &source_of(&spec.source),
        &ckpt.tokenizer,
        spec.num_samples.0,
        spec.seqlen.0,
        spec.seed,
    )
    .with_context(|| format!("{}: calibration", recipe.path.display()))
}

/// Runs the pipeline and writes the checkpoint. Returns what was written and the pipeline's
/// reports (for the summary).
pub fn quantize_calibrated(
    ckpt: &Checkpoint,
    plan: &QuantPlan,
    calib: &CalibrationSet,
    out: &Path,
    opts: &ConvertOptions,
    pipeline_opts: PipelineOptions,
    progress: &mut dyn FnMut(PipelineEvent),
) -> Result<(QuantSummary, CalibratedModel)> {
    let mut model = pipeline::run(
        &ckpt.config,
        &*ckpt.weights,
        plan,
        &calib.windows,
        pipeline_opts,
        progress,
    )?;
    let report = json!({
        "calibration": {
            "description": calib.description,
            "windows": calib.num_samples(),
            "seqlen": calib.seqlen,
            "windows_int32_le_sha256": calib.sha256_le_i32(),
            "note": calib.note,
        },
        "pipeline_seconds": model.seconds,
        "layers": model.layers,
    });
    let report = serde_json::to_vec_pretty(&report)?;
    let mut packed = std::mem::take(&mut model.packed);
    let summary = write_packed_checkpoint(
        ckpt,
        plan,
        out,
        opts,
        &[("quantize-report.json", report)],
        &mut std::mem::take(&mut model.floats),
        |name, _| {
            packed
                .remove(name)
                .ok_or_else(|| anyhow!("{name}: the pipeline produced no packed weight"))
        },
        |_| {},
    )?;
    Ok((summary, model))
}
