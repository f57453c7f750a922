//! OneBit (Xu et al. 2024): 1-bit weights as a sign matrix and two full-precision value
//! vectors, initialized by SVID and trained by knowledge distillation from the original
//! model. [`svid`] is the pure initialization math; [`student`] the trainable burn model;
//! [`distill`] the training loop with checkpoints; [`writer`] the packed checkpoint the
//! runtime executes (layout in `lmq_runtime::packed::onebit`); [`plot`] the loss curve.

pub mod distill;
pub mod init;
pub mod plot;
pub mod run;
pub mod student;
pub mod svid;
pub mod writer;
