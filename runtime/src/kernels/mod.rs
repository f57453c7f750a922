//! CPU kernels for the linear layers, each beside the plain reference it is tested against.
//! Decode multiplies one activation row by every weight: that is a memory-bound GEMV, which
//! burn's generic matmul runs single-threaded below its parallel threshold; these kernels
//! stream the `[out, in]` weight rows once, split across threads.

pub mod attention;
pub mod block_codes;
pub mod dense_f32;
pub mod fast_exp;
pub mod gemv_f32_avx2;
pub mod int8;
pub mod int8_avx2;
pub mod int8_vnni;
pub mod onebit;
pub mod packed_gemm_i16;
pub mod packed_i16;
pub mod packed_q;
pub mod packed_vnni;
pub mod panel_f32;
pub mod simd;
pub mod team;

pub use dense_f32::{matmul_f32_nt, matmul_f32_nt_ref, matmul_panel_nt};
pub use panel_f32::PanelF32;
