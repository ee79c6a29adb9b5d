//! Seeded synthetic samples, for when no calibration data is given. Each sample is generated
//! from (seed, sample index, input index) alone, so any sample can be read in any order and
//! shards see exactly the samples a single run would.

use std::collections::BTreeMap;
use std::fmt;

use half::{bf16, f16};
use kiln_compiler::rng::SplitMix64;
use kiln_compiler::{DataType, Tensor};

use super::{DataError, DimSpec, InputSpec, Sample, SampleSource};

/// What the CLI prints when it falls back to synthetic data.
pub const SYNTHETIC_WARNING: &str = "no calibration data given (--data): calibrating on seeded synthetic inputs; \
     the ranges will not reflect real data and the accuracy of a model quantized with them will suffer";

/// How the values of one input are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Uniform in `[low, high)`.
    Uniform { low: f64, high: f64 },
    /// Normal with this mean and standard deviation.
    Normal { mean: f64, std: f64 },
    /// Integers uniform in `[low, high)`.
    Integers { low: i64, high: i64 },
    /// Every element the same.
    Fill(f64),
}

impl Distribution {
    /// The default for a type: uniform in [-1, 1) for floats; 0 or 1 for integers and
    /// booleans (valid as token ids, masks and flags alike).
    pub fn default_for(dtype: DataType) -> Distribution {
        if dtype.is_float() {
            Distribution::Uniform { low: -1.0, high: 1.0 }
        } else {
            Distribution::Integers { low: 0, high: 2 }
        }
    }

    /// Parses `uniform:LOW,HIGH`, `normal:MEAN,STD`, `int:LOW,HIGH` or `fill:VALUE`.
    pub fn parse(text: &str) -> Result<Distribution, String> {
        let (kind, args) = text.split_once(':').unwrap_or((text, ""));
        let nums: Vec<&str> = args.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let bad = || {
            format!("bad distribution '{text}': expected uniform:LOW,HIGH, normal:MEAN,STD, int:LOW,HIGH or fill:VALUE")
        };
        let f = |i: usize| nums.get(i).and_then(|s| s.parse::<f64>().ok()).filter(|v| v.is_finite()).ok_or_else(bad);
        let n = |i: usize| nums.get(i).and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad);
        let d = match (kind, nums.len()) {
            ("uniform", 2) => Distribution::Uniform { low: f(0)?, high: f(1)? },
            ("normal", 2) => Distribution::Normal { mean: f(0)?, std: f(1)? },
            ("int", 2) => Distribution::Integers { low: n(0)?, high: n(1)? },
            ("fill", 1) => Distribution::Fill(f(0)?),
            _ => return Err(bad()),
        };
        match d {
            Distribution::Uniform { low, high } if low >= high => Err(format!("'{text}': LOW must be below HIGH")),
            Distribution::Integers { low, high } if low >= high => Err(format!("'{text}': LOW must be below HIGH")),
            Distribution::Normal { std, .. } if std < 0.0 => Err(format!("'{text}': STD must not be negative")),
            d => Ok(d),
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distribution::Uniform { low, high } => write!(f, "uniform:{low},{high}"),
            Distribution::Normal { mean, std } => write!(f, "normal:{mean},{std}"),
            Distribution::Integers { low, high } => write!(f, "int:{low},{high}"),
            Distribution::Fill(v) => write!(f, "fill:{v}"),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    pub samples: usize,
    pub seed: u64,
    /// Sizes of symbolic dimensions by name; unnamed or unlisted dynamic dimensions are 1.
    pub dims: BTreeMap<String, usize>,
    /// Whole shapes by input name (for dynamic dimensions without a name); they override
    /// `dims`, and are checked against the model like any sample.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Value distributions by input name; others get [`Distribution::default_for`].
    pub values: BTreeMap<String, Distribution>,
}

impl Default for SyntheticSpec {
    fn default() -> SyntheticSpec {
        SyntheticSpec { samples: 16, seed: 0, dims: BTreeMap::new(), shapes: BTreeMap::new(), values: BTreeMap::new() }
    }
}

/// The synthetic source: shapes resolved once, values drawn per sample.
#[derive(Debug)]
pub struct Synthetic {
    seed: u64,
    samples: usize,
    inputs: Vec<(String, DataType, Vec<usize>, Distribution)>,
}

impl Synthetic {
    pub fn new(model_inputs: &[InputSpec], spec: &SyntheticSpec) -> Result<Synthetic, DataError> {
        let config = |what: String| DataError::Config { what };
        for name in spec.values.keys().chain(spec.shapes.keys()) {
            if !model_inputs.iter().any(|i| &i.name == name) {
                return Err(config(format!("synthetic values for `{name}`, which is not an input of the model")));
            }
        }
        let mut inputs = Vec::new();
        for i in model_inputs {
            let dims = match (spec.shapes.get(&i.name), &i.dims) {
                (Some(shape), _) => shape.clone(),
                (None, Some(dims)) => dims
                    .iter()
                    .map(|d| match d {
                        DimSpec::Fixed(n) => *n,
                        DimSpec::Symbol(s) => spec.dims.get(s).copied().unwrap_or(1),
                        DimSpec::Any => 1,
                    })
                    .collect(),
                (None, None) => {
                    return Err(config(format!(
                        "input `{}` has no declared rank; give its shape for synthetic data",
                        i.name
                    )));
                }
            };
            let dist = spec.values.get(&i.name).copied().unwrap_or_else(|| Distribution::default_for(i.dtype));
            if !supported(i.dtype) {
                return Err(config(format!(
                    "input `{}` has type {}, which synthetic data cannot fill",
                    i.name, i.dtype
                )));
            }
            inputs.push((i.name.clone(), i.dtype, dims, dist));
        }
        Ok(Synthetic { seed: spec.seed, samples: spec.samples, inputs })
    }
}

fn supported(d: DataType) -> bool {
    use DataType as D;
    matches!(
        d,
        D::F32
            | D::F64
            | D::F16
            | D::BF16
            | D::I8
            | D::U8
            | D::I16
            | D::U16
            | D::I32
            | D::U32
            | D::I64
            | D::U64
            | D::Bool
    )
}

/// The generator, with the draws synthetic data needs.
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }

    fn draw(&mut self, d: Distribution) -> f64 {
        match d {
            Distribution::Uniform { low, high } => low + (high - low) * self.unit(),
            Distribution::Normal { mean, std } => {
                // Box-Muller; 1 - u is in (0, 1], so the logarithm is finite.
                let (u, v) = (1.0 - self.unit(), self.unit());
                mean + std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
            }
            Distribution::Integers { low, high } => {
                let span = high.wrapping_sub(low) as u64;
                low.wrapping_add((self.next() % span) as i64) as f64
            }
            Distribution::Fill(v) => v,
        }
    }

    fn draw_int(&mut self, d: Distribution) -> i64 {
        match d {
            Distribution::Integers { low, high } => {
                let span = high.wrapping_sub(low) as u64;
                low.wrapping_add((self.next() % span) as i64)
            }
            other => self.draw(other).round() as i64,
        }
    }
}

fn fill(dtype: DataType, dims: Vec<usize>, n: usize, dist: Distribution, rng: &mut Rng) -> Result<Tensor, String> {
    use DataType as D;
    let floats = |rng: &mut Rng| (0..n).map(|_| rng.draw(dist)).collect::<Vec<f64>>();
    let ints = |rng: &mut Rng| (0..n).map(|_| rng.draw_int(dist)).collect::<Vec<i64>>();
    let t = match dtype {
        D::F32 => Tensor::from_slice(dims, &floats(rng).into_iter().map(|v| v as f32).collect::<Vec<_>>()),
        D::F64 => Tensor::from_slice(dims, &floats(rng)),
        D::F16 => Tensor::from_slice(dims, &floats(rng).into_iter().map(f16::from_f64).collect::<Vec<_>>()),
        D::BF16 => Tensor::from_slice(dims, &floats(rng).into_iter().map(bf16::from_f64).collect::<Vec<_>>()),
        D::I8 => Tensor::from_slice(dims, &ints(rng).into_iter().map(|v| v as i8).collect::<Vec<_>>()),
        D::U8 => Tensor::from_slice(dims, &ints(rng).into_iter().map(|v| v as u8).collect::<Vec<_>>()),
        D::I16 => Tensor::from_slice(dims, &ints(rng).into_iter().map(|v| v as i16).collect::<Vec<_>>()),
        D::U16 => Tensor::from_slice(dims, &ints(rng).into_iter().map(|v| v as u16).collect::<Vec<_>>()),
        D::I32 => Tensor::from_slice(dims, &ints(rng).into_iter().map(|v| v as i32).collect::<Vec<_>>()),
        D::U32 => Tensor::from_slice(dims, &ints(rng).into_iter().map(|v| v as u32).collect::<Vec<_>>()),
        D::I64 => Tensor::from_slice(dims, &ints(rng)),
        D::U64 => Tensor::from_slice(dims, &ints(rng).into_iter().map(|v| v as u64).collect::<Vec<_>>()),
        D::Bool => Tensor::from_slice(dims, &ints(rng).into_iter().map(|v| v != 0).collect::<Vec<_>>()),
        other => return Err(format!("type {other} cannot be filled")),
    };
    t.map_err(|e| e.to_string())
}

impl SampleSource for Synthetic {
    fn len(&self) -> usize {
        self.samples
    }

    fn origin(&self, index: usize) -> String {
        format!("synthetic sample {index} (seed {})", self.seed)
    }

    fn read(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.samples {
            return Err(super::folder::out_of_range(index, self.samples));
        }
        let origin = self.origin(index);
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for (k, (name, dtype, dims, dist)) in self.inputs.iter().enumerate() {
            // One stream per (seed, sample, input): mixing through one SplitMix step keeps
            // neighbouring indices uncorrelated.
            let mut mix =
                Rng(SplitMix64::new(self.seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03) ^ (k as u64) << 56));
            let mut rng = Rng(SplitMix64::new(mix.next()));
            let n = dims.iter().product();
            let t = fill(*dtype, dims.clone(), n, *dist, &mut rng).map_err(|m| DataError::read(&origin, m))?;
            inputs.push((name.clone(), t));
        }
        Ok(Sample { origin, inputs })
    }

    fn describe(&self) -> String {
        let parts: Vec<String> =
            self.inputs.iter().map(|(n, d, dims, dist)| format!("{n}: {d}{dims:?} {dist}")).collect();
        format!("{} synthetic samples (seed {}; {})", self.samples, self.seed, parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::validate;

    fn specs() -> Vec<InputSpec> {
        vec![
            InputSpec {
                name: "x".into(),
                dtype: DataType::F32,
                dims: Some(vec![DimSpec::Symbol("batch".into()), DimSpec::Fixed(4), DimSpec::Any]),
            },
            InputSpec { name: "ids".into(), dtype: DataType::I64, dims: Some(vec![DimSpec::Symbol("seq".into())]) },
        ]
    }

    #[test]
    fn seeded_shaped_and_random_access() {
        let mut spec = SyntheticSpec { samples: 5, seed: 42, ..Default::default() };
        spec.dims.insert("seq".into(), 6);
        spec.values.insert("x".into(), Distribution::parse("normal:10,0.5").unwrap());
        spec.values.insert("ids".into(), Distribution::parse("int:100,200").unwrap());
        let src = Synthetic::new(&specs(), &spec).unwrap();
        let a = src.read(3).unwrap();
        let b = Synthetic::new(&specs(), &spec).unwrap().read(3).unwrap();
        validate(&specs(), &a).unwrap();
        assert_eq!(a.inputs[0].1.dims(), [1, 4, 1]);
        assert_eq!(a.inputs[1].1.dims(), [6]);
        assert_eq!(a.inputs[0].1, b.inputs[0].1, "same seed, same sample");
        assert_ne!(a.inputs[0].1, src.read(2).unwrap().inputs[0].1, "samples differ");
        let x = a.inputs[0].1.to_vec::<f32>().unwrap();
        assert!(x.iter().all(|v| (7.0..13.0).contains(v)), "{x:?}");
        let ids = a.inputs[1].1.to_vec::<i64>().unwrap();
        assert!(ids.iter().all(|v| (100..200).contains(v)), "{ids:?}");
        assert!(src.read(5).is_err());
    }

    #[test]
    fn distributions_parse_and_refuse() {
        assert_eq!(Distribution::parse("uniform:-1,1").unwrap(), Distribution::Uniform { low: -1.0, high: 1.0 });
        assert_eq!(Distribution::parse("fill:1").unwrap(), Distribution::Fill(1.0));
        for bad in ["uniform:1,0", "normal:0", "int:a,b", "poisson:1", "uniform:0,inf"] {
            assert!(Distribution::parse(bad).is_err(), "{bad}");
        }
        let mut spec = SyntheticSpec::default();
        spec.values.insert("nope".into(), Distribution::Fill(0.0));
        assert!(Synthetic::new(&specs(), &spec).is_err());
    }
}
