//! Causal attention of new query rows against a host-side KV cache (decode and chunked
//! prefill). burn's attention wants contiguous `[b, heads, seq, d]` keys with one key head per
//! query head; feeding it a growing cache means copying (and repeating) the whole cache every
//! layer of every token, which dominated decode time. Here keys stay where they were written.

use rayon::prelude::*;

use super::simd::dot_f32;

/// Shapes of one cached attention call.
#[derive(Debug, Clone, Copy)]
pub struct CachedAttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// New query rows (their keys are the last `queries` cached positions).
    pub queries: usize,
    /// Positions in the cache including the new ones.
    pub len: usize,
    /// Allocated positions per head in the cache layout `[kv_heads, capacity, head_dim]`.
    pub capacity: usize,
}

/// Plain definition in f64: query row i (position `len − queries + i`) attends to keys
/// `0..=position` of its KV head (`head / (heads / kv_heads)`), scale `1/√d`.
/// `q` is `[heads, queries, d]`; returns `[queries, heads, d]`.
pub fn attention_cached_ref(q: &[f32], k: &[f32], v: &[f32], s: CachedAttnShape) -> Vec<f32> {
    let d = s.head_dim;
    let rep = s.heads / s.kv_heads;
    let mut out = vec![0.0f32; s.queries * s.heads * d];
    for h in 0..s.heads {
        let kvh = h / rep;
        for i in 0..s.queries {
            let pos = s.len - s.queries + i;
            let qrow = &q[(h * s.queries + i) * d..][..d];
            let scores: Vec<f64> = (0..=pos)
                .map(|j| {
                    let krow = &k[(kvh * s.capacity + j) * d..][..d];
                    qrow.iter()
                        .zip(krow)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
            for (j, sc) in scores.iter().enumerate() {
                let p = (sc - m).exp() / z;
                let vrow = &v[(kvh * s.capacity + j) * d..][..d];
                for c in 0..d {
                    out[(i * s.heads + h) * d + c] += (p * vrow[c] as f64) as f32;
                }
            }
        }
    }
    out
}

/// Fast version of [`attention_cached_ref`]: parallel over (head, query) rows, f32 dot
/// products, softmax with an f32 running max.
pub fn attention_cached(q: &[f32], k: &[f32], v: &[f32], s: CachedAttnShape) -> Vec<f32> {
    let d = s.head_dim;
    let rep = s.heads / s.kv_heads;
    assert_eq!(q.len(), s.heads * s.queries * d, "query shape");
    assert!(
        k.len() >= s.kv_heads * s.capacity * d && s.len <= s.capacity,
        "cache shape"
    );
    let scale = 1.0 / (d as f32).sqrt();
    // Rows in output order [queries, heads]: row r = i * heads + h.
    let mut out = vec![0.0f32; s.queries * s.heads * d];
    out.par_chunks_mut(d).enumerate().for_each_init(
        || Vec::with_capacity(s.len),
        |scores: &mut Vec<f32>, (r, orow)| {
            let (i, h) = (r / s.heads, r % s.heads);
            let kvh = h / rep;
            let pos = s.len - s.queries + i;
            let qrow = &q[(h * s.queries + i) * d..][..d];
            let kbase = &k[kvh * s.capacity * d..];
            let vbase = &v[kvh * s.capacity * d..];
            scores.clear();
            let mut m = f32::NEG_INFINITY;
            for j in 0..=pos {
                let sc = dot_f32(qrow, &kbase[j * d..(j + 1) * d]) * scale;
                m = m.max(sc);
                scores.push(sc);
            }
            let mut z = 0.0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - m).exp();
                z += *sc;
            }
            let inv = 1.0 / z;
            for (j, &p) in scores.iter().enumerate() {
                let w = p * inv;
                for (o, &x) in orow.iter_mut().zip(&vbase[j * d..(j + 1) * d]) {
                    *o += w * x;
                }
            }
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 scores and softmax against the f64 definition.
    const ATTN_ABS_TOL: f32 = 1e-5;

    #[test]
    fn cached_attention_matches_reference() {
        for (heads, kv_heads, queries, len) in
            [(4, 2, 1, 9), (9, 3, 5, 5), (2, 2, 3, 20), (6, 1, 1, 1)]
        {
            let (d, capacity) = (16, 24);
            let s = CachedAttnShape {
                heads,
                kv_heads,
                head_dim: d,
                queries,
                len,
                capacity,
            };
            let gen = |n: usize, m: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i * m % 61) as f32 - 30.0) / 17.0)
                    .collect()
            };
            let q = gen(heads * queries * d, 7);
            let k = gen(kv_heads * capacity * d, 11);
            let v = gen(kv_heads * capacity * d, 13);
            let want = attention_cached_ref(&q, &k, &v, s);
            let got = attention_cached(&q, &k, &v, s);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < ATTN_ABS_TOL, "{s:?}: {err}");
        }
    }
}
