//! The CPU the `cpu` target runs on: which INT8 form its integer kernels run fast.
//!
//! ORT's x86 u8×s8 kernels without VNNI (AVX2 `vpmaddubsw`) add pairs of products into 16
//! bits and can saturate; with VNNI (AVX512-VNNI or AVX-VNNI) they accumulate into 32 bits.
//! So: S8S8 QDQ where VNNI exists (and on other architectures), U8S8 with 7-bit weights
//! (`reduce_range`) where it does not.

use serde::Serialize;

use crate::capabilities::Int8Form;

/// The CPU features that decide the INT8 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CpuFeatures {
    pub x86_64: bool,
    pub avx2: bool,
    pub avx512_vnni: bool,
    pub avx_vnni: bool,
}

impl CpuFeatures {
    /// The features of this machine.
    pub fn detect() -> CpuFeatures {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                x86_64: true,
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                avx512_vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
                avx_vnni: std::arch::is_x86_feature_detected!("avxvnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures { x86_64: false, avx2: false, avx512_vnni: false, avx_vnni: false }
        }
    }

    pub fn has_vnni(&self) -> bool {
        self.avx512_vnni || self.avx_vnni
    }

    /// The static INT8 form to emit for this CPU.
    pub fn preferred_int8(&self) -> Int8Form {
        if self.x86_64 && !self.has_vnni() { Int8Form::QdqU8S8ReduceRange } else { Int8Form::QdqS8S8 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnni_decides_the_form() {
        let mut f = CpuFeatures { x86_64: true, avx2: true, avx512_vnni: false, avx_vnni: false };
        assert_eq!(f.preferred_int8(), Int8Form::QdqU8S8ReduceRange);
        f.avx_vnni = true;
        assert_eq!(f.preferred_int8(), Int8Form::QdqS8S8);
        let arm = CpuFeatures { x86_64: false, avx2: false, avx512_vnni: false, avx_vnni: false };
        assert_eq!(arm.preferred_int8(), Int8Form::QdqS8S8);
        // Detection agrees with the kernel's view of this machine.
        let here = CpuFeatures::detect();
        if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
            let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
            let has = |f: &str| flags.split_whitespace().any(|x| x == f);
            assert_eq!(here.avx512_vnni, has("avx512_vnni"), "{here:?}");
            assert_eq!(here.avx2, has("avx2"), "{here:?}");
        }
    }
}
