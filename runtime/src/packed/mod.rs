//! Packed quantized weight layouts: one definition per on-disk format, shared by the
//! checkpoint writer (in `lmq-quant`) and the runtime's kernels, so that what is written is
//! exactly what is executed. Each layout has pack, unpack and a scalar dequantize reference
//! that the fast kernels in [`crate::kernels`] are tested against.

pub mod int_quantized;
pub mod onebit;
pub mod pack_quantized;

pub use int_quantized::{ActQuant, Int8Linear};
pub use onebit::OneBitLinear;
pub use pack_quantized::{PackError, PackedLinear};
