//! Which 16-bit float kernels a runtime has. ONNX Runtime's CPU provider inserts FP32 casts
//! around FP16 nodes it has no kernel for, but not around BF16 ones: a BF16 node without a CPU
//! kernel makes the session fail to load. The table (`ort_cpu_kernels.txt`, written by
//! `gen_ort_cpu_kernels.py` from ONNX Runtime 1.31.1's kernel registry) lists every CPU kernel
//! that takes FP16 or BF16; an op absent from it has none.
//!
//! The CUDA provider is described the other way round: its kernel registry cannot be listed
//! (`get_all_opkernel_def` crashes in the GPU build without TensorRT), so
//! `ort_cuda_missing_f16.txt` lists what was *measured* to be missing: FP16 nodes that ONNX
//! Runtime 1.31.1 moved to the CPU (with a copy on each side) while their FP32 form ran on the
//! GPU, or that failed at run time (`xtask/gpu/probe_placement.py` over the conformance cases
//! and the fixtures, on an H100). Everything else is taken to have an FP16 kernel.

use std::collections::HashMap;
use std::sync::OnceLock;

use kiln_compiler::DataType;
use kiln_compiler::ops::TypeSet;

const ORT_CPU: &str = include_str!("ort_cpu_kernels.txt");
const ORT_CUDA_MISSING_F16: &str = include_str!("ort_cuda_missing_f16.txt");

/// One registered kernel: the opset versions it serves and the types per type parameter.
#[derive(Debug, Clone)]
struct Kernel {
    first: i64,
    last: i64,
    params: Vec<(String, TypeSet)>,
}

/// Kernels of one execution provider that accept a 16-bit float somewhere, or (a deny table)
/// the 16-bit bindings it lacks.
#[derive(Debug, Default)]
pub struct KernelTable {
    by_op: HashMap<(String, String), Vec<Kernel>>,
    /// The lines name what is missing; an op not named has every 16-bit kernel.
    deny: bool,
}

impl KernelTable {
    /// ONNX Runtime 1.31.1's CPU execution provider.
    pub fn ort_cpu() -> &'static KernelTable {
        static TABLE: OnceLock<KernelTable> = OnceLock::new();
        // The file ships with the crate and a test parses it whole.
        TABLE.get_or_init(|| KernelTable::parse(ORT_CPU).unwrap_or_default())
    }

    /// ONNX Runtime 1.31.1's CUDA execution provider, for FP16: every op except the measured
    /// gaps in `ort_cuda_missing_f16.txt`.
    pub fn ort_cuda_f16() -> &'static KernelTable {
        static TABLE: OnceLock<KernelTable> = OnceLock::new();
        TABLE.get_or_init(|| KernelTable::parse_missing(ORT_CUDA_MISSING_F16).unwrap_or_default())
    }

    /// Parses a deny table: the same line format, each line naming the types a type parameter
    /// cannot take in that op's versions.
    pub fn parse_missing(text: &str) -> Result<KernelTable, String> {
        Ok(KernelTable { deny: true, ..KernelTable::parse(text)? })
    }

    /// Parses the `ort_cpu_kernels.txt` format; an error names the line.
    pub fn parse(text: &str) -> Result<KernelTable, String> {
        let mut by_op: HashMap<(String, String), Vec<Kernel>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("kernel table line {}: {what}", i + 1);
            let (head, body) = line.split_once('|').ok_or_else(|| bad("no `|`"))?;
            let mut head = head.split_whitespace();
            let (Some(domain), Some(op), Some(range)) = (head.next(), head.next(), head.next()) else {
                return Err(bad("expected `DOMAIN OP FIRST-LAST`"));
            };
            let (first, last) = range.split_once('-').ok_or_else(|| bad("bad version range"))?;
            let first = first.parse::<i64>().map_err(|_| bad("bad first version"))?;
            let last = last.parse::<i64>().map_err(|_| bad("bad last version"))?;
            let mut params = Vec::new();
            for p in body.split_whitespace() {
                let (name, set) = p.split_once('=').ok_or_else(|| bad("bad parameter"))?;
                let inner = set.trim_start_matches('{').trim_end_matches('}');
                let mut types = Vec::new();
                for t in inner.split(',').filter(|t| !t.is_empty()) {
                    types.push(DataType::from_name(t).ok_or_else(|| bad(&format!("unknown type `{t}`")))?);
                }
                params.push((name.to_string(), TypeSet::of(&types)));
            }
            let domain = if domain == "-" { String::new() } else { domain.to_string() };
            by_op.entry((domain, op.to_string())).or_default().push(Kernel { first, last, params });
        }
        Ok(KernelTable { by_op, deny: false })
    }

    /// Whether some kernel of `(domain, op_type)` for schema version `since_version` accepts
    /// every `(type parameter, element type)` of `assignment`.
    pub fn supports(&self, domain: &str, op_type: &str, since_version: i64, assignment: &[(&str, DataType)]) -> bool {
        let Some(kernels) = self.by_op.get(&(domain.to_string(), op_type.to_string())) else { return self.deny };
        if self.deny {
            // Unsupported when a gap of these versions names a type the assignment gives.
            return !kernels
                .iter()
                .filter(|k| (k.first..=k.last).contains(&since_version))
                .any(|k| assignment.iter().any(|(p, d)| k.params.iter().any(|(n, set)| n == p && set.allows(*d))));
        }
        kernels.iter().filter(|k| (k.first..=k.last).contains(&since_version)).any(|k| {
            assignment.iter().all(|(p, d)| k.params.iter().find(|(n, _)| n == p).is_none_or(|(_, set)| set.allows(*d)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_and_knows_the_cpu_provider() {
        let t = KernelTable::parse(ORT_CPU).unwrap();
        assert!(t.by_op.len() > 60, "{} ops", t.by_op.len());
        let cpu = KernelTable::ort_cpu();
        // Data movement has BF16 kernels on CPU; arithmetic does not.
        assert!(cpu.supports("", "Reshape", 14, &[("T", DataType::BF16)]));
        assert!(cpu.supports("", "LayerNormalization", 17, &[("T", DataType::BF16), ("U", DataType::F32)]));
        assert!(!cpu.supports("", "LayerNormalization", 17, &[("T", DataType::BF16), ("U", DataType::BF16)]));
        assert!(!cpu.supports("", "Conv", 11, &[("T", DataType::BF16)]));
        assert!(!cpu.supports("", "Add", 14, &[("T", DataType::BF16)]));
        assert!(cpu.supports("com.microsoft", "SkipLayerNormalization", 1, &[("T", DataType::BF16)]));
    }

    #[test]
    fn the_cuda_deny_table_names_the_measured_gaps_only() {
        let t = KernelTable::parse_missing(ORT_CUDA_MISSING_F16).unwrap();
        assert!(!t.by_op.is_empty());
        let cuda = KernelTable::ort_cuda_f16();
        // Clip takes FP16 on the GPU from opset 12 (min/max as inputs); before, it ran on the CPU.
        assert!(!cuda.supports("", "Clip", 11, &[("T", DataType::F16)]));
        assert!(!cuda.supports("", "Clip", 6, &[("T", DataType::F16)]));
        assert!(cuda.supports("", "Clip", 11, &[("T", DataType::F32)]));
        assert!(cuda.supports("", "Clip", 12, &[("T", DataType::F16)]));
        assert!(cuda.supports("", "Clip", 13, &[("T", DataType::F16)]));
        // FusedConv's CUDA kernel is FP32 only.
        assert!(!cuda.supports("com.microsoft", "FusedConv", 1, &[("T", DataType::F16)]));
        // Resize reads its roi as FP32 on the GPU whatever the data type is.
        assert!(cuda.supports("", "Resize", 19, &[("T1", DataType::F16), ("T2", DataType::F32)]));
        assert!(!cuda.supports("", "Resize", 19, &[("T1", DataType::F16), ("T2", DataType::F16)]));
        assert!(!cuda.supports("", "Resize", 11, &[("T1", DataType::F16), ("T2", DataType::F16)]));
        // Ops with no line have their kernels.
        assert!(cuda.supports("", "Conv", 11, &[("T", DataType::F16)]));
        assert!(cuda.supports("com.microsoft", "Attention", 1, &[("T", DataType::F16)]));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let e = KernelTable::parse("# c\n- Relu 1-5 | T={f32}\n- Relu x-5 | T={f32}").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        assert!(KernelTable::parse("- Relu 1-5 | T={f99}").is_err());
    }
}
