//! Which processor runs the model (`--device cpu|cuda[:N]` on the binaries), and the one
//! place that turns that choice into a backend type: code generic over [`LinearBackend`]
//! is written once and [`run_on`] instantiates it for the CPU or the GPU.

use std::str::FromStr;

use crate::model::LinearBackend;

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// burn's flex backend with this crate's CPU kernels.
    #[default]
    Cpu,
    /// burn-cuda on GPU `N` with the cubecl kernels in `crate::gpu`.
    Cuda(usize),
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected cpu, cuda or cuda:N")]
    Unknown(String),
    #[error(
        "--device cuda:{index}: this build has no CUDA support; rebuild with `--features cuda`"
    )]
    NotBuilt { index: usize },
    #[error("--device cuda:{index}: no usable CUDA device ({reason})")]
    Unavailable { index: usize, reason: String },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_owned())),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Work written once over any backend: [`run_on`] picks the backend and its device.
pub trait OnBackend {
    type Output;
    /// Runs the work on backend `B` and `device`.
    fn run<B: LinearBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `job` on the device `spec` names; a CUDA device that this build lacks or that cannot
/// be opened is an error, not a panic.
pub fn run_on<J: OnBackend>(spec: DeviceSpec, job: J) -> Result<J::Output, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(job.run::<crate::Cpu>(Default::default())),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(index) => Ok(job.run::<crate::gpu::Gpu>(crate::gpu::open(index)?)),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(index) => Err(DeviceError::NotBuilt { index }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("CUDA:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        struct Nothing;
        impl OnBackend for Nothing {
            type Output = ();
            fn run<B: LinearBackend>(self, _: B::Device) {}
        }
        let err = run_on(DeviceSpec::Cuda(0), Nothing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
