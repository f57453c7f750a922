//! Which linears of a Llama/Qwen2 decoder layer share an input, and what produces it: the
//! data AWQ and SmoothQuant both fold their per-channel scales along (`1/s` into the
//! producer, `s` into the consumers' input columns), so the float function is unchanged.

use super::layer::{HostLayer, HostLinear};
use crate::awq::scale_columns;

/// Where the scaled input comes from: the producer that absorbs `1/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smooth {
    InputNorm,
    PostNorm,
    V,
    Up,
}

/// Which linears of a layer, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// One mapping: the producer of an input, the linears reading it, and (implicitly, by
/// `name`) the block whose output the search compares.
pub struct Mapping {
    pub name: &'static str,
    pub smooth: Smooth,
    pub balance: &'static [Role],
}

/// llm-compressor's default Llama mappings (also Qwen2's).
pub const MAPPINGS: [Mapping; 4] = [
    Mapping {
        name: "input_layernorm→q/k/v",
        smooth: Smooth::InputNorm,
        balance: &[Role::Q, Role::K, Role::V],
    },
    Mapping {
        name: "v_proj→o_proj",
        smooth: Smooth::V,
        balance: &[Role::O],
    },
    Mapping {
        name: "post_attention_layernorm→gate/up",
        smooth: Smooth::PostNorm,
        balance: &[Role::Gate, Role::Up],
    },
    Mapping {
        name: "up_proj→down_proj",
        smooth: Smooth::Up,
        balance: &[Role::Down],
    },
];

/// Linears AutoAWQ never clips: errors in q/k are amplified by the softmax.
pub const NO_CLIP: [Role; 2] = [Role::Q, Role::K];

pub fn linear(layer: &HostLayer, r: Role) -> &HostLinear {
    match r {
        Role::Q => &layer.q,
        Role::K => &layer.k,
        Role::V => &layer.v,
        Role::O => &layer.o,
        Role::Gate => &layer.gate,
        Role::Up => &layer.up,
        Role::Down => &layer.down,
    }
}

pub fn linear_mut(layer: &mut HostLayer, r: Role) -> &mut HostLinear {
    match r {
        Role::Q => &mut layer.q,
        Role::K => &mut layer.k,
        Role::V => &mut layer.v,
        Role::O => &mut layer.o,
        Role::Gate => &mut layer.gate,
        Role::Up => &mut layer.up,
        Role::Down => &mut layer.down,
    }
}

pub fn divide(v: &mut [f32], s: &[f32]) {
    for (a, b) in v.iter_mut().zip(s) {
        *a /= b;
    }
}

/// Divides output row `j` (and bias `j`) by `s_j`; returns the tensors changed.
pub fn divide_rows(lin: &mut HostLinear, s: &[f32]) -> Vec<String> {
    for (row, sv) in lin.weight.chunks_exact_mut(lin.inp).zip(s) {
        row.iter_mut().for_each(|v| *v /= sv);
    }
    let mut changed = vec![lin.name.clone()];
    if let Some(b) = &mut lin.bias {
        divide(b, s);
        changed.push(format!("{}.bias", lin.name.trim_end_matches(".weight")));
    }
    changed
}

/// Why mapping `m` has no per-channel fold in `layer` (the producer's outputs are not the
/// consumers' inputs one for one, as v_proj → o_proj under grouped-query attention).
pub fn unfoldable(layer: &HostLayer, m: &Mapping) -> Option<String> {
    let cols = linear(layer, m.balance[0]).inp;
    let producer_rows = match m.smooth {
        Smooth::InputNorm | Smooth::PostNorm => cols,
        Smooth::V => layer.v.out,
        Smooth::Up => layer.up.out,
    };
    (producer_rows != cols).then(|| {
        format!(
            "{}: the producer has {producer_rows} outputs for {cols} inputs (grouped-query \
             attention), no per-channel fold exists",
            m.name
        )
    })
}

/// Folds scales `s` along mapping `m`: the consumers' input columns times `s`, the
/// producer's output channels (norm weight, or linear rows and bias) divided by `s`. Returns
/// the names of the tensors changed (`prefix` is the layer's, `model.layers.N`).
pub fn fold(layer: &mut HostLayer, m: &Mapping, s: &[f32], prefix: &str) -> Vec<String> {
    let mut changed = Vec::new();
    for &r in m.balance {
        let lin = linear_mut(layer, r);
        lin.weight = scale_columns(&lin.weight, lin.inp, s);
        changed.push(lin.name.clone());
    }
    match m.smooth {
        Smooth::InputNorm => {
            divide(&mut layer.input_norm, s);
            changed.push(format!("{prefix}.input_layernorm.weight"));
        }
        Smooth::PostNorm => {
            divide(&mut layer.post_norm, s);
            changed.push(format!("{prefix}.post_attention_layernorm.weight"));
        }
        Smooth::V => changed.extend(divide_rows(&mut layer.v, s)),
        Smooth::Up => changed.extend(divide_rows(&mut layer.up, s)),
    }
    changed
}
