//! Dequantizers against an independent implementation: the `gguf` Python package (0.19.0,
//! `gguf.quants.dequantize`, written in numpy separately from ggml's C code).
//!
//! Pseudo-random blocks are generated here with splitmix64 (the same generator was run in
//! Python), with every f16 scale field overwritten by a small exactly representable value so
//! the output is finite. The table holds what Python computed for the same bytes: the sum,
//! a position-weighted sum (catches element-order mistakes that keep the plain sum), the
//! weighted absolute sum (tolerance scale) and six sampled values.
//!
//! The generator script that produced the table:
//!
//! ```python
//! def splitmix(seed, nbytes):            # seed = ggml type id; u64 outputs, little endian
//!     ...
//! FIELDS = {Q4_0: [0], Q4_1: [0, 2], ...}  # byte offsets of f16 fields per block
//! scale(b, k) = ±((b * 7 + k * 3) % 13 + 1) / 1024, negative when (b + k) % 3 == 0
//! F16 element i = ((i * 37) % 2001 - 1000) / 64;  BF16 element i = ((i * 37) % 256 - 128) / 64
//! stats: w_i = ((i * 2654435761) mod 2^32) / 2^32; sum x, sum x*w, sum |x*w| (f64)
//! ```
//!
//! The real models were also compared tensor by tensor, all elements, against the same
//! package: SmolLM2-135M (Q4_1, Q8_0, F32) and Qwen2.5-Coder-0.5B (Q4_K, Q5_0, Q6_K, Q8_0,
//! F32) decode bit-identically.

use half::{bf16, f16};
use lmq_runtime::gguf::{dequantize, GgmlType};

const N: usize = 2048;
const SAMPLES: [usize; 6] = [0, 1, 17, 255, 1000, 2047];

/// (ggml type id, sum, weighted sum, weighted |sum|, samples) as computed by Python.
#[allow(clippy::type_complexity)]
const REFERENCE: [(u32, f64, f64, f64, [f64; 6]); 12] = [
    (
        1,
        -109.421875,
        -41.13296455768432,
        8002.247798835764,
        [-15.625, -15.046875, -5.796875, 6.734375, -0.28125, 10.96875],
    ), // F16
    (
        30,
        -16.0,
        3.3513428680598736,
        1025.8371958732605,
        [-2.0, -1.421875, -0.171875, 1.421875, 0.125, 1.421875],
    ), // BF16
    (
        2,
        -0.927734375,
        0.18463138047854954,
        28.166264549579864,
        [
            0.0009765625,
            -0.00390625,
            0.0068359375,
            -0.0322265625,
            -0.068359375,
            -0.025390625,
        ],
    ), // Q4_0
    (
        3,
        36.197265625,
        18.315431113401928,
        49.81074317994421,
        [
            0.0,
            0.0,
            0.0029296875,
            0.09765625,
            0.0712890625,
            -0.162109375,
        ],
    ), // Q4_1
    (
        6,
        -2.2490234375,
        -0.7570608972753234,
        58.09393235429957,
        [
            -0.00390625,
            -0.0126953125,
            0.0048828125,
            -0.064453125,
            -0.029296875,
            -0.076171875,
        ],
    ), // Q5_0
    (
        7,
        77.703125,
        36.36138795366219,
        108.2124045069188,
        [
            -0.0078125,
            -0.001953125,
            -0.017578125,
            0.0654296875,
            0.2275390625,
            -0.1748046875,
        ],
    ), // Q5_1
    (
        8,
        21.453125,
        21.403993288118045,
        458.06724285916175,
        [
            0.1044921875,
            0.0166015625,
            -0.0205078125,
            -0.0537109375,
            -0.947265625,
            -0.939453125,
        ],
    ), // Q8_0
    (
        10,
        3.01953125,
        -0.10456078533024993,
        105.81288346448764,
        [
            -0.056640625,
            -0.06640625,
            -0.0078125,
            -0.0537109375,
            -0.10546875,
            -0.0029296875,
        ],
    ), // Q2_K
    (
        11,
        14.4716796875,
        4.553644780385184,
        197.33813532803833,
        [
            -0.0,
            0.0791015625,
            0.009765625,
            0.017578125,
            -0.31640625,
            -0.34375,
        ],
    ), // Q3_K
    (
        12,
        1026.2001953125,
        521.008294403749,
        1562.7235295294618,
        [
            -0.91015625,
            -0.44140625,
            -0.96875,
            -0.46484375,
            -0.755859375,
            1.3271484375,
        ],
    ), // Q4_K
    (
        13,
        2535.1357421875,
        1282.5349636781373,
        3166.5755876753838,
        [
            -0.5673828125,
            -0.298828125,
            -1.373046875,
            -0.6015625,
            -0.83203125,
            1.5341796875,
        ],
    ), // Q5_K
    (
        14,
        564.5537109375,
        247.47349700787436,
        5751.560484830398,
        [
            -0.029296875,
            -0.380859375,
            -0.45703125,
            1.625,
            15.5390625,
            3.8671875,
        ],
    ), // Q6_K
];

/// Byte offsets of the f16 scale fields in one block of each quantized type.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        other => panic!("no reference data for {other}"),
    }
}

fn splitmix_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend((z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn scale(block: usize, field: usize) -> f32 {
    let v = ((block * 7 + field * 3) % 13 + 1) as f32 / 1024.0;
    if (block + field).is_multiple_of(3) {
        -v
    } else {
        v
    }
}

/// The test input for `ty`, byte for byte as the Python script built it.
fn input(ty: GgmlType) -> Vec<u8> {
    match ty {
        GgmlType::F16 => (0..N)
            .flat_map(|i| {
                f16::from_f32(((i * 37) % 2001) as f32 / 64.0 - 1000.0 / 64.0).to_le_bytes()
            })
            .collect(),
        GgmlType::BF16 => (0..N)
            .flat_map(|i| bf16::from_f32(((i * 37) % 256) as f32 / 64.0 - 2.0).to_le_bytes())
            .collect(),
        _ => {
            let (elems, block_bytes) = ty.block_layout().unwrap();
            let n_blocks = N / elems;
            let mut bytes = splitmix_bytes(ty.id() as u64, n_blocks * block_bytes);
            for (b, block) in bytes.chunks_exact_mut(block_bytes).enumerate() {
                for (k, &off) in f16_fields(ty).iter().enumerate() {
                    block[off..off + 2].copy_from_slice(&f16::from_f32(scale(b, k)).to_le_bytes());
                }
            }
            bytes
        }
    }
}

#[test]
fn matches_python_gguf_reference() {
    for (id, sum, wsum, wabs, samples) in REFERENCE {
        let ty = GgmlType::from_id(id);
        let bytes = input(ty);
        let mut out = vec![f32::NAN; N];
        dequantize(ty, &bytes, N, &mut out).unwrap();
        assert!(out.iter().all(|x| x.is_finite()), "{ty}");
        for (&i, &want) in SAMPLES.iter().zip(&samples) {
            let got = f64::from(out[i]);
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{ty}[{i}]: got {got}, want {want}"
            );
        }
        let weight =
            |i: usize| ((i as u64 * 2_654_435_761) % (1 << 32)) as f64 / (1u64 << 32) as f64;
        let got_sum: f64 = out.iter().map(|&x| x as f64).sum();
        let got_wsum: f64 = out
            .iter()
            .enumerate()
            .map(|(i, &x)| x as f64 * weight(i))
            .sum();
        let tol = 1e-9 * wabs.max(1.0);
        assert!(
            (got_sum - sum).abs() <= tol * 4.0,
            "{ty}: sum {got_sum} vs {sum}"
        );
        assert!(
            (got_wsum - wsum).abs() <= tol,
            "{ty}: weighted sum {got_wsum} vs {wsum}"
        );
    }
}
