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

/// Tree attention (Medusa verification): the last `s.queries` cache rows are tree nodes;
/// node i attends to every earlier position and to node j when `mask[i * queries + j]`
/// (itself and its ancestors). With a lower-triangular mask this is [`attention_cached`].
pub fn attention_tree(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: CachedAttnShape,
    mask: &[bool],
) -> Vec<f32> {
    let (d, n) = (s.head_dim, s.queries);
    let rep = s.heads / s.kv_heads;
    assert_eq!(q.len(), s.heads * n * d, "query shape");
    assert_eq!(mask.len(), n * n, "mask shape");
    let prefix = s.len - n;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; n * s.heads * d];
    out.par_chunks_mut(d).enumerate().for_each(|(r, orow)| {
        let (i, h) = (r / s.heads, r % s.heads);
        let kvh = h / rep;
        let qrow = &q[(h * n + i) * d..][..d];
        let kbase = &k[kvh * s.capacity * d..];
        let vbase = &v[kvh * s.capacity * d..];
        let seen: Vec<usize> = (0..prefix)
            .chain((0..n).filter(|&j| mask[i * n + j]).map(|j| prefix + j))
            .collect();
        let scores: Vec<f32> = seen
            .iter()
            .map(|&j| dot_f32(qrow, &kbase[j * d..(j + 1) * d]) * scale)
            .collect();
        let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|x| (x - m).exp()).collect();
        let inv = 1.0 / e.iter().sum::<f32>();
        for (&j, &p) in seen.iter().zip(&e) {
            let w = p * inv;
            for (o, &x) in orow.iter_mut().zip(&vbase[j * d..(j + 1) * d]) {
                *o += w * x;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_attention_with_a_causal_mask_is_cached_attention() {
        let (heads, kv_heads, n, len, d, capacity) = (4, 2, 5, 12, 8, 16);
        let s = CachedAttnShape {
            heads,
            kv_heads,
            head_dim: d,
            queries: n,
            len,
            capacity,
        };
        let gen = |c: usize, m: usize| -> Vec<f32> {
            (0..c)
                .map(|i| ((i * m % 53) as f32 - 26.0) / 13.0)
                .collect()
        };
        let (q, k, v) = (
            gen(heads * n * d, 7),
            gen(kv_heads * capacity * d, 11),
            gen(kv_heads * capacity * d, 5),
        );
        let causal: Vec<bool> = (0..n * n).map(|x| x % n <= x / n).collect();
        let a = attention_tree(&q, &k, &v, s, &causal);
        let b = attention_cached(&q, &k, &v, s);
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6));
        // A node that sees only itself and the prefix differs from the causal answer.
        let diag: Vec<bool> = (0..n * n).map(|x| x % n == x / n).collect();
        let c = attention_tree(&q, &k, &v, s, &diag);
        assert!(c[(n - 1) * heads * d..]
            .iter()
            .zip(&b[(n - 1) * heads * d..])
            .any(|(x, y)| (x - y).abs() > 1e-3));
        assert_eq!(
            c[..heads * d],
            b[..heads * d],
            "node 0 sees the same keys either way"
        );
    }

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
