//! Presets: named sets of `optimize` options for common deployments. A preset is only a list
//! of flags, applied before the config file and the command line, so anything it sets can be
//! overridden.

/// A named deployment preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// ONNX Runtime CPU, static INT8 QDQ from calibration data, O3 fusions.
    CpuInt8,
    /// ONNX Runtime CPU, dynamic INT8 (no calibration data), O3 fusions.
    CpuInt8Dynamic,
    /// ONNX Runtime CUDA, FP16 with contrib fusions.
    CudaFp16,
    /// TensorRT, symmetric INT8 QDQ, standard ONNX ops only.
    TensorRtInt8,
    /// 4-bit weights (blocks of 32 along K), activations in float, for ONNX Runtime CPU.
    Int4WeightOnly,
}

impl Preset {
    pub const ALL: [Preset; 5] =
        [Preset::CpuInt8, Preset::CpuInt8Dynamic, Preset::CudaFp16, Preset::TensorRtInt8, Preset::Int4WeightOnly];

    /// The name `--preset` takes.
    pub fn name(self) -> &'static str {
        match self {
            Preset::CpuInt8 => "cpu-int8",
            Preset::CpuInt8Dynamic => "cpu-int8-dynamic",
            Preset::CudaFp16 => "cuda-fp16",
            Preset::TensorRtInt8 => "tensorrt-int8",
            Preset::Int4WeightOnly => "int4-weight-only",
        }
    }

    pub fn parse(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The flags this preset stands for.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Preset::CpuInt8 => &["--target=cpu", "--opt=o3", "--precision=int8"],
            Preset::CpuInt8Dynamic => &["--target=cpu", "--opt=o3", "--precision=int8", "--dynamic"],
            Preset::CudaFp16 => &["--target=cuda", "--opt=o3", "--precision=fp16"],
            // O2: TensorRT takes standard ONNX ops only and fuses by itself.
            Preset::TensorRtInt8 => &["--target=tensorrt", "--opt=o2", "--precision=int8"],
            Preset::Int4WeightOnly => &["--target=cpu", "--opt=o3", "--precision=int4", "--block=32"],
        }
    }
}

impl clap::ValueEnum for Preset {
    fn value_variants<'a>() -> &'a [Preset] {
        &Preset::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_every_preset_sets_a_precision() {
        for p in Preset::ALL {
            assert_eq!(Preset::parse(p.name()), Some(p));
            assert!(p.flags().iter().any(|f| f.starts_with("--precision=")), "{}", p.name());
        }
        assert_eq!(Preset::parse("gpu"), None);
    }
}
