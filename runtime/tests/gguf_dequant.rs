//! Hand-built blocks for every dequantizer. Each test packs known quants and scales into the
//! block layout described by ggml (ggml-common.h / ggml-quants.c `quantize_row_*`), then
//! checks the decoded values against the format's formula computed here, element by element,
//! so that nibble order, sub-block order and scale packing mistakes are all caught.

use half::{bf16, f16};
use lmq_runtime::gguf::{dequantize, GgmlType, GgufError};

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn decode(dtype: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize(dtype, bytes, n, &mut out).expect("dequantize");
    out
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-6 * w.abs().max(1.0);
        assert!((g - w).abs() <= tol, "element {i}: got {g}, want {w}");
    }
}

#[test]
fn f32_f16_bf16_plain() {
    let vals = [0.0f32, 1.5, -2.25, 65504.0, -0.000_061_035_156];
    let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_close(&decode(GgmlType::F32, &f32_bytes, 5), &vals);
    let f16_bytes: Vec<u8> = vals.iter().flat_map(|&v| h(v)).collect();
    assert_close(&decode(GgmlType::F16, &f16_bytes, 5), &vals);
    let bf = [1.0f32, -3.5, 1.0e30, 0.0078125];
    let bf_bytes: Vec<u8> = bf
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    let got = decode(GgmlType::BF16, &bf_bytes, 4);
    assert_eq!(got[0], 1.0);
    assert_eq!(got[1], -3.5);
    assert!((got[2] / 1.0e30 - 1.0).abs() < 1e-2);
    assert_eq!(got[3], 0.0078125);
}

/// Two Q4_0 blocks: the low nibble of byte j is element j, the high nibble element j + 16.
#[test]
fn q4_0_nibble_order() {
    let mut bytes = Vec::new();
    for d in [0.5f32, -2.0] {
        bytes.extend(h(d));
        bytes.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    }
    let mut want = Vec::new();
    for d in [0.5f32, -2.0] {
        want.extend((0..16).map(|j| (j as f32 - 8.0) * d));
        want.extend((0..16).map(|j| ((15 - j) as f32 - 8.0) * d));
    }
    let got = decode(GgmlType::Q4_0, &bytes, 64);
    assert_close(&got, &want);
    // (0 - 8) * 0.5; element 16 is the high nibble 15: (15 - 8) * 0.5; second block,
    // element 1: (1 - 8) * -2.
    assert_eq!((got[0], got[16], got[33]), (-4.0, 3.5, 14.0));
}

#[test]
fn q4_1_scale_and_min() {
    let (d, m) = (0.25f32, -1.0f32);
    let mut bytes = Vec::new();
    bytes.extend(h(d));
    bytes.extend(h(m));
    bytes.extend((0..16u8).map(|j| j | ((j ^ 5) << 4)));
    let mut want: Vec<f32> = (0..16).map(|j| j as f32 * d + m).collect();
    want.extend((0..16).map(|j| (j ^ 5) as f32 * d + m));
    let got = decode(GgmlType::Q4_1, &bytes, 32);
    assert_close(&got, &want);
    assert_eq!((got[15], got[16]), (2.75, 0.25));
}

/// Fifth bits for Q5 blocks: bit i of the little-endian u32 belongs to element i.
const Q5_HIGH_BITS: u32 = (1 << 0) | (1 << 3) | (1 << 16) | (1 << 31);

fn q5_expected(qs: &[u8; 16], qh: u32, d: f32, offset: f32, min: f32) -> Vec<f32> {
    (0..32)
        .map(|i| {
            let nib = if i < 16 { qs[i] & 15 } else { qs[i - 16] >> 4 };
            let q = nib as u32 + 16 * ((qh >> i) & 1);
            (q as f32 - offset) * d + min
        })
        .collect()
}

#[test]
fn q5_0_high_bits() {
    let qs: [u8; 16] = std::array::from_fn(|j| j as u8 | ((15 - j as u8) << 4));
    let mut bytes = h(1.0).to_vec();
    bytes.extend(Q5_HIGH_BITS.to_le_bytes());
    bytes.extend(qs);
    let got = decode(GgmlType::Q5_0, &bytes, 32);
    assert_close(&got, &q5_expected(&qs, Q5_HIGH_BITS, 1.0, 16.0, 0.0));
    // element 1: 1 - 16; element 3: 3 + 16 - 16; element 16: 15 + 16 - 16; element 17:
    // 14 - 16; element 31: 0 + 16 - 16.
    assert_eq!(
        (got[1], got[3], got[16], got[17], got[31]),
        (-15.0, 3.0, 15.0, -2.0, 0.0)
    );
}

#[test]
fn q5_1_high_bits_and_min() {
    let qs: [u8; 16] = std::array::from_fn(|j| ((j as u8 * 7) & 15) | ((j as u8) << 4));
    let mut bytes = h(0.5).to_vec();
    bytes.extend(h(-3.0));
    bytes.extend(Q5_HIGH_BITS.to_le_bytes());
    bytes.extend(qs);
    let got = decode(GgmlType::Q5_1, &bytes, 32);
    assert_close(&got, &q5_expected(&qs, Q5_HIGH_BITS, 0.5, 0.0, -3.0));
    // element 31: high nibble 15 with the fifth bit set: 31 * 0.5 - 3.
    assert_eq!(got[31], 12.5);
}

#[test]
fn q8_0_and_q8_1() {
    let qs: Vec<u8> = (0..32).map(|i| (i as i8 - 16) as u8).collect();
    let mut q8_0 = h(0.125).to_vec();
    q8_0.extend(&qs);
    let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.125).collect();
    assert_close(&decode(GgmlType::Q8_0, &q8_0, 32), &want);

    let mut q8_1 = h(0.125).to_vec();
    q8_1.extend(h(1234.0)); // `s` only serves dot products
    q8_1.extend(&qs);
    assert_close(&decode(GgmlType::Q8_1, &q8_1, 32), &want);
}

#[test]
fn q8_k_f32_scale() {
    let mut bytes = 0.01f32.to_le_bytes().to_vec();
    bytes.extend((0..256).map(|i: i32| (i - 128) as i8 as u8));
    bytes.extend([0u8; 32]);
    let want: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 0.01).collect();
    assert_close(&decode(GgmlType::Q8_K, &bytes, 256), &want);
}

// ----- K-quants -----

/// Distinct 6-bit scales and mins per 32-element sub-block; sub-blocks 4..8 use values >= 16
/// so their split high bits matter.
const K4_SCALES: [u8; 8] = [1, 2, 3, 4, 17, 33, 50, 63];
const K4_MINS: [u8; 8] = [0, 5, 10, 63, 20, 40, 7, 1];

/// Packs eight 6-bit (scale, min) pairs as ggml does for Q4_K/Q5_K: bytes 0..4 hold scales
/// 0..4 in their low 6 bits, bytes 4..8 mins 0..4; bytes 8..12 hold the low nibbles of
/// scale j+4 (low) and min j+4 (high); the top two bits of bytes j and j+4 hold the high
/// bits of scale j+4 and min j+4.
fn pack_k4_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    s
}

/// 4-bit quants: in each 32-byte run p, low nibbles are sub-block 2p, high nibbles 2p + 1.
fn k4_qs() -> [u8; 128] {
    std::array::from_fn(|i| {
        let l = (i % 16) as u8;
        l | ((15 - l) << 4)
    })
}

/// The 4-bit quant of element `e` of a Q4_K/Q5_K super-block laid out by `k4_qs`.
fn k4_nibble(qs: &[u8; 128], e: usize) -> u8 {
    let (sub, l) = (e / 32, e % 32);
    let byte = qs[32 * (sub / 2) + l];
    if sub % 2 == 0 {
        byte & 15
    } else {
        byte >> 4
    }
}

#[test]
fn q4_k_scales_mins_and_order() {
    let (d, dmin) = (1.0f32, 0.5f32);
    let qs = k4_qs();
    let mut bytes = h(d).to_vec();
    bytes.extend(h(dmin));
    bytes.extend(pack_k4_scales(&K4_SCALES, &K4_MINS));
    bytes.extend(qs);
    let want: Vec<f32> = (0..256)
        .map(|e| {
            let s = e / 32;
            d * K4_SCALES[s] as f32 * k4_nibble(&qs, e) as f32 - dmin * K4_MINS[s] as f32
        })
        .collect();
    let got = decode(GgmlType::Q4_K, &bytes, 256);
    assert_close(&got, &want);
    // Sub-block 5 (scale 33, min 40) starts with a high nibble 15: 33 * 15 - 0.5 * 40.
    assert_eq!(got[5 * 32], 475.0);
    // Sub-block 0 (scale 1, min 0), element 3: 3.
    assert_eq!(got[3], 3.0);
}

#[test]
fn q5_k_fifth_bits() {
    let (d, dmin) = (0.5f32, 2.0f32);
    let qs = k4_qs();
    // qh[l] bit s is the fifth bit of element l of sub-block s.
    let qh: [u8; 32] = std::array::from_fn(|l| {
        (0..8)
            .filter(|b| (l + b) % 3 == 0)
            .fold(0u8, |acc, b| acc | (1 << b))
    });
    let mut bytes = h(d).to_vec();
    bytes.extend(h(dmin));
    bytes.extend(pack_k4_scales(&K4_SCALES, &K4_MINS));
    bytes.extend(qh);
    bytes.extend(qs);
    let want: Vec<f32> = (0..256)
        .map(|e| {
            let (s, l) = (e / 32, e % 32);
            let q = k4_nibble(&qs, e) as u32 + 16 * ((qh[l] as u32 >> s) & 1);
            d * K4_SCALES[s] as f32 * q as f32 - dmin * K4_MINS[s] as f32
        })
        .collect();
    let got = decode(GgmlType::Q5_K, &bytes, 256);
    assert_close(&got, &want);
    // Sub-block 7 (scale 63, min 1), l = 2: high nibble 13, fifth bit set ((2 + 7) % 3 == 0).
    assert_eq!(got[7 * 32 + 2], 0.5 * 63.0 * 29.0 - 2.0);
}

/// Element order of the 2-bit planes shared by Q2_K and Q3_K: element e = 128h + 32k + l
/// sits in bits 2k..2k+2 of byte 32h + l.
fn pack_2bit(vals: &[u8; 256]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for (e, &v) in vals.iter().enumerate() {
        let (half, k, l) = (e / 128, (e % 128) / 32, e % 32);
        qs[32 * half + l] |= (v & 3) << (2 * k);
    }
    qs
}

#[test]
fn q2_k_sub_block_order() {
    let (d, dmin) = (0.5f32, 0.25f32);
    let sc: [u8; 16] = std::array::from_fn(|i| (i as u8 * 5 + 1) & 15);
    let mn: [u8; 16] = std::array::from_fn(|i| 15 - i as u8);
    let q: [u8; 256] = std::array::from_fn(|e| ((e * 7 + e / 16) % 4) as u8);
    let mut bytes: Vec<u8> = (0..16).map(|i| sc[i] | (mn[i] << 4)).collect();
    bytes.extend(pack_2bit(&q));
    bytes.extend(h(d));
    bytes.extend(h(dmin));
    let want: Vec<f32> = (0..256)
        .map(|e| d * sc[e / 16] as f32 * q[e] as f32 - dmin * mn[e / 16] as f32)
        .collect();
    assert_close(&decode(GgmlType::Q2_K, &bytes, 256), &want);
}

/// Packs sixteen 6-bit Q3_K scales as ggml's `quantize_row_q3_K`: low nibbles of scales
/// 0..8 in bytes 0..8, of scales 8..16 in their high nibbles; the two high bits of scale j
/// in byte 8 + j % 4 at bit 2 * (j / 4).
fn pack_q3_scales(ls: &[u8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            s[j] = l & 15;
        } else {
            s[j - 8] |= (l & 15) << 4;
        }
        s[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
    s
}

#[test]
fn q3_k_scales_and_high_mask() {
    let d = 0.25f32;
    let ls: [u8; 16] = std::array::from_fn(|j| ((j * 13 + 5) % 64) as u8);
    // Levels 0..8 encode q = level - 4. The high bit of element e is bit e / 32 of
    // hmask[e % 32], set when the level is >= 4; the 2-bit plane holds level & 3.
    let levels: [u8; 256] = std::array::from_fn(|e| ((e * 5 + e / 32) % 8) as u8);
    let mut hmask = [0u8; 32];
    let mut low = [0u8; 256];
    for (e, &lv) in levels.iter().enumerate() {
        if lv >= 4 {
            hmask[e % 32] |= 1 << (e / 32);
        }
        low[e] = lv & 3;
    }
    let mut bytes = hmask.to_vec();
    bytes.extend(pack_2bit(&low));
    bytes.extend(pack_q3_scales(&ls));
    bytes.extend(h(d));
    let want: Vec<f32> = (0..256)
        .map(|e| d * (ls[e / 16] as f32 - 32.0) * (levels[e] as f32 - 4.0))
        .collect();
    assert_close(&decode(GgmlType::Q3_K, &bytes, 256), &want);
}

#[test]
fn q6_k_layout_and_signed_scales() {
    let d = 0.5f32;
    let sc: [i8; 16] = std::array::from_fn(|i| {
        if i % 2 == 0 {
            i as i8 + 1
        } else {
            -(i as i8) - 1
        }
    });
    let q: [u8; 256] = std::array::from_fn(|e| ((e * 7 + 3) % 64) as u8);
    // Element e = 128h + 32k + l: low 4 bits in ql[64h + 32(k % 2) + l] (low nibble for
    // k < 2, high nibble otherwise), high 2 bits in qh[32h + l] at bit 2k.
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for (e, &v) in q.iter().enumerate() {
        let (half, k, l) = (e / 128, (e % 128) / 32, e % 32);
        ql[64 * half + 32 * (k % 2) + l] |= (v & 15) << (4 * (k / 2));
        qh[32 * half + l] |= (v >> 4) << (2 * k);
    }
    let mut bytes = ql.to_vec();
    bytes.extend(qh);
    bytes.extend(sc.iter().map(|&s| s as u8));
    bytes.extend(h(d));
    let want: Vec<f32> = (0..256)
        .map(|e| d * sc[e / 16] as f32 * (q[e] as f32 - 32.0))
        .collect();
    let got = decode(GgmlType::Q6_K, &bytes, 256);
    assert_close(&got, &want);
    // Element 200: q = (1400 + 3) % 64 = 59, sub-block 12 has scale 13: 0.5 * 13 * 27.
    assert_eq!(got[200], 175.5);
}

/// Many blocks decode exactly as each block decoded on its own, so the parallel chunking
/// never misaligns blocks and outputs.
#[test]
fn parallel_matches_blockwise() {
    let n_blocks = 3000;
    let mut bytes = Vec::with_capacity(n_blocks * 210);
    let mut state = 0x1234_5678_u32;
    for b in 0..n_blocks {
        for _ in 0..208 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            bytes.push((state >> 24) as u8);
        }
        bytes.extend(h(0.001 * (b % 17) as f32));
    }
    let all = decode(GgmlType::Q6_K, &bytes, n_blocks * 256);
    for (b, chunk) in bytes.chunks(210).enumerate() {
        let one = decode(GgmlType::Q6_K, chunk, 256);
        assert_eq!(&all[b * 256..][..256], &one[..], "block {b}");
    }
}

#[test]
fn length_and_type_errors() {
    let mut out = vec![0f32; 32];
    let err = dequantize(GgmlType::Q4_0, &[0u8; 17], 32, &mut out).unwrap_err();
    assert!(matches!(err, GgufError::BadLength { .. }), "{err}");
    let err = dequantize(GgmlType::Q4_0, &[0u8; 18], 31, &mut out[..31]).unwrap_err();
    assert!(err.to_string().contains("whole number"), "{err}");
    let err = dequantize(GgmlType::Q4_0, &[0u8; 18], 32, &mut out[..16]).unwrap_err();
    assert!(err.to_string().contains("output"), "{err}");
    let err = dequantize(GgmlType::Other(20), &[0u8; 18], 32, &mut out).unwrap_err();
    assert!(matches!(err, GgufError::Unsupported { .. }), "{err}");
    dequantize(GgmlType::Q4_K, &[], 0, &mut []).expect("empty input is fine");
}
