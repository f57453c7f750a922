//! The runtime on an NVIDIA GPU: burn-cuda for the tensor work, our cubecl kernels for the
//! packed formats ([`kernels`]), and [`open`], which turns "no GPU here" into an error
//! instead of the panic burn-cuda raises on a worker thread.

pub mod fused;
pub mod kernels;
pub mod linear;
pub mod selftest;

use std::sync::{Arc, Mutex};

use burn::prelude::*;

pub use burn::backend::cuda::CudaDevice;
pub use linear::GpuWeight;

use crate::device::DeviceError;

/// burn-cuda without fusion or autotune: f32 floats, i32 ints.
pub type Gpu = burn::backend::Cuda;

/// Opens GPU `index` and runs a two-element sum on it, so a missing driver, device or NVRTC
/// shows up here as [`DeviceError::Unavailable`] with the driver's message.
pub fn open(index: usize) -> Result<CudaDevice, DeviceError> {
    let device = CudaDevice { index };
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&messages);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut m) = seen.lock() {
            m.push(info.to_string());
        }
    }));
    let probe = std::panic::catch_unwind(|| {
        let t = Tensor::<Gpu, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar()
    });
    std::panic::set_hook(previous);
    let reason = match probe {
        Ok(3.0) => return Ok(device),
        Ok(v) => format!("a test sum of 1 + 2 gave {v}"),
        Err(_) => messages
            .lock()
            .map(|m| m.first().cloned().unwrap_or_default())
            .unwrap_or_default(),
    };
    Err(DeviceError::Unavailable { index, reason })
}
