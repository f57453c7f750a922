//! Why GPTQ calibrated on 2048-token windows does worse than on 512 (README, #3): per
//! position bucket of the calibration windows, how much each linear group's inputs weigh in
//! the Hessian `H = Σ xxᵀ`. `cargo run --release -p lmq-quant --example position_stats --
//! TOKENS.i32 [WINDOWS]` (the comparison tokens of `../shared/reference/`, cut into windows
//! of 2048). Prints, for each group and a few layers, the trace of each 512-position
//! bucket's share of H relative to the first bucket's, the largest channel's share of the
//! trace, how far each bucket's normalized H is from the first's, and the share of the whole
//! trace that each window's first positions carry (an even share would be 1/2048 = 0.05%).

use lmq_quant::pipeline::layer::{HostLayer, LayerGeometry};
use lmq_runtime::checkpoint::Checkpoint;

const SEQ: usize = 2048;
const BUCKET: usize = 512;
/// Leading positions whose share of the trace is printed one by one.
const FIRST: usize = 4;

/// Per bucket: H (n × n, f64) accumulated over its positions; `first[p]` collects the
/// squared norms of the first few positions of every window.
fn bucket_hessians(x: &[f32], n: usize, h: &mut [Vec<f64>], first: &mut [f64]) {
    for (pos, row) in x.chunks_exact(n).enumerate() {
        if let Some(f) = first.get_mut(pos % SEQ) {
            *f += row.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
        }
        let hb = &mut h[(pos % SEQ) / BUCKET];
        for i in 0..n {
            let xi = row[i] as f64;
            if xi == 0.0 {
                continue;
            }
            let line = &mut hb[i * n..(i + 1) * n];
            for (j, v) in line.iter_mut().enumerate() {
                *v += xi * row[j] as f64;
            }
        }
    }
}

/// One linear group's inputs: H per position bucket and the first positions' squared norms.
struct Group {
    name: &'static str,
    n: usize,
    h: Vec<Vec<f64>>,
    first: Vec<f64>,
}

impl Group {
    fn add(&mut self, x: &[f32]) {
        bucket_hessians(x, self.n, &mut self.h, &mut self.first);
    }
}

fn trace(h: &[f64], n: usize) -> f64 {
    (0..n).map(|i| h[i * n + i]).sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("token file");
    let windows: usize = args.get(2).map_or(2, |s| s.parse().unwrap());
    let ids: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
        .take(windows * SEQ)
        .collect();
    let ckpt = Checkpoint::open("smollm2").unwrap();
    let c = &ckpt.config;
    let d = c.hidden_size;
    let embed = ckpt.weights.load_f32("model.embed_tokens.weight").unwrap();
    let g = LayerGeometry::new(c, SEQ);
    let mut xs: Vec<Vec<f32>> = ids
        .chunks_exact(SEQ)
        .map(|w| {
            w.iter()
                .flat_map(|&i| embed[i as usize * d..][..d].to_vec())
                .collect()
        })
        .collect();
    let buckets = SEQ / BUCKET;
    println!("layer group  | trace share by bucket (÷ bucket 0) | top channel % of trace by bucket | ‖Ĥ_b − Ĥ_0‖/‖Ĥ_0‖ | % of trace at positions 0..{FIRST}");
    for li in 0..c.num_layers {
        let layer = HostLayer::load(&*ckpt.weights, c, li).unwrap();
        let show = [0, 1, 2, 5, 10, 15, 20, 25, 29].contains(&li);
        let mut groups: Vec<Group> = [
            ("qkv", d),
            ("o", d),
            ("gate/up", d),
            ("down", c.intermediate_size),
        ]
        .into_iter()
        .map(|(name, n)| Group {
            name,
            n,
            h: vec![vec![0.0f64; n * n]; buckets],
            first: vec![0.0; FIRST],
        })
        .collect();
        for x in xs.iter_mut() {
            let xn = layer.attn_norm(&g, x);
            let attn = layer.attention(&g, &xn);
            let h = layer.attn_residual(x, &attn);
            let hn = layer.mlp_norm(&g, &h);
            let act = layer.mlp_act(&hn);
            if show {
                groups[0].add(&xn);
                groups[1].add(&attn);
                groups[2].add(&hn);
                groups[3].add(&act);
            }
            *x = layer.mlp_residual(&h, &act);
        }
        if !show {
            continue;
        }
        for Group {
            name,
            n,
            h: hs,
            first,
        } in &groups
        {
            let traces: Vec<f64> = hs.iter().map(|h| trace(h, *n)).collect();
            let total: f64 = traces.iter().sum();
            let firsts: Vec<f64> = first.iter().map(|f| f / total * 100.0).collect();
            let top: Vec<f64> = hs
                .iter()
                .zip(&traces)
                .map(|(h, t)| (0..*n).map(|i| h[i * n + i]).fold(0.0, f64::max) / t * 100.0)
                .collect();
            let dist: Vec<f64> = hs
                .iter()
                .zip(&traces)
                .map(|(h, t)| {
                    let (mut num, mut den) = (0.0, 0.0);
                    for (a, b) in h.iter().zip(&hs[0]) {
                        let (a, b) = (a / t, b / traces[0]);
                        num += (a - b) * (a - b);
                        den += b * b;
                    }
                    (num / den).sqrt()
                })
                .collect();
            let f = |v: &[f64], p: usize| {
                v.iter()
                    .map(|x| format!("{x:.*}", p))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let rel: Vec<f64> = traces.iter().map(|t| t / traces[0]).collect();
            println!(
                "{li:>5} {name:<7}| {} | {} | {} | {}",
                f(&rel, 2),
                f(&top, 1),
                f(&dist, 3),
                f(&firsts, 1)
            );
        }
    }
}
