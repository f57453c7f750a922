//! GGML tensor element types and their block geometry.

/// The element type of a GGUF tensor (`ggml_type`), so that the reader can size tensor data
/// and pick a dequantizer. Types without a named variant keep their numeric id in `Other`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
    /// Any other `ggml_type` id (IQ*, TQ*, integer types, ...), kept so it can be reported.
    Other(u32),
}

/// Elements per K-quant super-block (`QK_K` in ggml).
pub const QK_K: usize = 256;

impl GgmlType {
    /// Maps a `ggml_type` id as stored in a GGUF tensor info to a type.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The `ggml_type` id, the inverse of [`GgmlType::from_id`] (used when writing GGUF).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// `(elements per block, bytes per block)`, as in ggml's type traits; `None` for ids this
    /// crate does not know, whose data therefore cannot even be sized.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        let layout = match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2_K => (QK_K, 84),
            Self::Q3_K => (QK_K, 110),
            Self::Q4_K => (QK_K, 144),
            Self::Q5_K => (QK_K, 176),
            Self::Q6_K => (QK_K, 210),
            Self::Q8_K => (QK_K, 292),
            Self::Other(id) => return other_layout(id),
        };
        Some(layout)
    }

    /// Elements per block (1 for plain float types); `None` for unknown ids.
    pub fn block_elements(self) -> Option<usize> {
        self.block_layout().map(|(elems, _)| elems)
    }

    /// Bytes per block; `None` for unknown ids.
    pub fn block_bytes(self) -> Option<usize> {
        self.block_layout().map(|(_, bytes)| bytes)
    }

    /// Whether [`crate::gguf::dequantize`] can decode this type.
    pub fn can_dequantize(self) -> bool {
        !matches!(self, Self::Other(_))
    }
}

/// Block geometry of the ggml types without a named variant (ggml-common.h), so files holding
/// them still open and their tensors can be sized and skipped.
fn other_layout(id: u32) -> Option<(usize, usize)> {
    let layout = match id {
        16 => (QK_K, 66),  // IQ2_XXS
        17 => (QK_K, 74),  // IQ2_XS
        18 => (QK_K, 98),  // IQ3_XXS
        19 => (QK_K, 50),  // IQ1_S
        20 => (32, 18),    // IQ4_NL
        21 => (QK_K, 110), // IQ3_S
        22 => (QK_K, 82),  // IQ2_S
        23 => (QK_K, 136), // IQ4_XS
        24 => (1, 1),      // I8
        25 => (1, 2),      // I16
        26 => (1, 4),      // I32
        27 | 28 => (1, 8), // I64, F64
        29 => (QK_K, 56),  // IQ1_M
        34 => (QK_K, 54),  // TQ1_0
        35 => (QK_K, 66),  // TQ2_0
        39 => (32, 17),    // MXFP4
        _ => return None,
    };
    Some(layout)
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Other(id) => write!(f, "ggml type {id}"),
            named => write!(f, "{named:?}"),
        }
    }
}
