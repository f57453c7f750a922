//! The streaming writer and the runtime's reader agree, for single files and for HF's
//! sharded layout (`model.safetensors.index.json`), in f32, bf16 and f16.

use std::collections::BTreeMap;
use std::path::Path;

use lmq_quant::safetensors_writer::{encode_f32, write_streaming, StDtype, TensorSpec};
use lmq_runtime::weights::{SafetensorsDir, WeightSource};

fn tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    (0..5)
        .map(|i| {
            let shape = vec![3 + i, 4];
            let data = (0..shape[0] * 4)
                .map(|j| (j as f32 - 5.0) * 0.37 + i as f32)
                .collect();
            (format!("model.layers.{i}.mlp.up_proj.weight"), shape, data)
        })
        .collect()
}

fn write(path: &Path, ts: &[(String, Vec<usize>, Vec<f32>)], dtype: StDtype) {
    let specs: Vec<TensorSpec> = ts
        .iter()
        .map(|(n, s, _)| TensorSpec {
            name: n.clone(),
            dtype,
            shape: s.clone(),
        })
        .collect();
    write_streaming(path, &specs, &BTreeMap::new(), |s| {
        let (_, _, d) = ts.iter().find(|t| t.0 == s.name).unwrap();
        Ok(encode_f32(d, s.dtype))
    })
    .unwrap();
}

#[test]
fn sharded_checkpoint_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let all = tensors();
    let (a, b) = all.split_at(2);
    write(
        &tmp.path().join("model-00001-of-00002.safetensors"),
        a,
        StDtype::F32,
    );
    write(
        &tmp.path().join("model-00002-of-00002.safetensors"),
        b,
        StDtype::F32,
    );
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        for (n, _, _) in part.iter() {
            map.insert(
                n.clone(),
                format!("model-0000{}-of-00002.safetensors", i + 1).into(),
            );
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let dir = SafetensorsDir::open(tmp.path()).unwrap();
    assert_eq!(dir.names().len(), all.len());
    for (n, s, d) in &all {
        assert_eq!(dir.shape(n).as_ref(), Some(s));
        assert_eq!(&dir.load_f32(n).unwrap(), d);
    }
}

#[test]
fn half_precision_values_round_to_nearest() {
    for (dtype, tol) in [(StDtype::BF16, 1.0 / 256.0), (StDtype::F16, 1.0 / 2048.0)] {
        let tmp = tempfile::tempdir().unwrap();
        let all = tensors();
        write(&tmp.path().join("model.safetensors"), &all, dtype);
        let dir = SafetensorsDir::open(tmp.path()).unwrap();
        for (n, _, d) in &all {
            for (x, y) in dir.load_f32(n).unwrap().iter().zip(d) {
                assert!(
                    (x - y).abs() <= tol * y.abs().max(1e-3),
                    "{dtype:?}: {x} vs {y}"
                );
            }
        }
    }
}
