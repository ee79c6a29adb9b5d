//! Sample data options shared by `optimize` and `optimize calibrate`: where the samples come
//! from, how many are kept apart for evaluation, and how synthetic samples are made when none
//! are given.

use std::path::PathBuf;
use std::sync::Arc;

use kiln::calibration::data::{
    self, Distribution, InputSpec, SYNTHETIC_WARNING, SharedSource, Synthetic, SyntheticSpec, held_apart,
};

use crate::{Failure, Ui};

#[derive(clap::Args)]
pub struct DataArgs {
    /// Calibration data: a folder of .npz files (one sample each, keys = input names), a folder
    /// of sample folders holding <input>.npy files, a folder of ONNX test_data_set_N folders, or
    /// one .npz/.safetensors whose arrays have a leading sample axis. Without it, seeded
    /// synthetic inputs are used (with a warning).
    #[arg(long, value_name = "DIR|FILE")]
    pub data: Option<PathBuf>,
    /// Calibrate on the first PCT% of the samples only, keeping the rest apart for evaluation.
    #[arg(long, value_name = "PCT")]
    pub calibration_split: Option<f64>,
    /// Synthetic data: number of samples.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub samples: usize,
    /// Synthetic data: the seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Synthetic data: the size of a symbolic dimension (repeatable; others are 1).
    #[arg(long = "dim", value_name = "SYMBOL=SIZE")]
    pub dims: Vec<String>,
    /// Synthetic data: an input's whole shape (repeatable; for unnamed dynamic dimensions).
    #[arg(long = "shape", value_name = "INPUT=D0,D1,…")]
    pub shapes: Vec<String>,
    /// Synthetic data: an input's values, uniform:LOW,HIGH | normal:MEAN,STD | int:LOW,HIGH |
    /// fill:V (repeatable; default uniform:-1,1 for floats, int:0,2 otherwise).
    #[arg(long = "synthetic", value_name = "INPUT=DIST")]
    pub synthetic: Vec<String>,
}

/// Calibration samples and the samples kept apart to evaluate the result.
pub struct Split {
    pub calibration: SharedSource,
    pub evaluation: Option<SharedSource>,
    /// Whether the samples are synthetic (the report must say so).
    pub synthetic: bool,
}

impl DataArgs {
    /// The synthetic spec from `--samples`, `--seed`, `--dim`, `--shape`, `--synthetic`.
    pub fn synthetic_spec(&self) -> Result<SyntheticSpec, Failure> {
        let mut spec = SyntheticSpec { samples: self.samples, seed: self.seed, ..Default::default() };
        for d in &self.dims {
            let (k, v) =
                d.split_once('=').ok_or_else(|| Failure::bad_input(format!("--dim '{d}': expected SYMBOL=SIZE")))?;
            let v = v.parse().map_err(|_| Failure::bad_input(format!("--dim '{d}': SIZE is not a number")))?;
            spec.dims.insert(k.to_string(), v);
        }
        for s in &self.shapes {
            let bad = || Failure::bad_input(format!("--shape '{s}': expected INPUT=D0,D1,…"));
            let (k, v) = s.split_once('=').ok_or_else(bad)?;
            let dims =
                v.split(',').map(|d| d.trim().parse::<usize>()).collect::<Result<Vec<_>, _>>().map_err(|_| bad())?;
            spec.shapes.insert(k.to_string(), dims);
        }
        for s in &self.synthetic {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| Failure::bad_input(format!("--synthetic '{s}': expected INPUT=DIST")))?;
            let dist = Distribution::parse(v).map_err(|e| Failure::bad_input(format!("--synthetic '{s}': {e}")))?;
            spec.values.insert(k.to_string(), dist);
        }
        Ok(spec)
    }

    /// The given samples, or synthetic ones (with a warning).
    fn all_samples(&self, inputs: &[InputSpec], ui: &Ui) -> Result<(SharedSource, bool), Failure> {
        match &self.data {
            Some(d) => Ok((data::open(d, inputs).map_err(Failure::bad_input)?, false)),
            None => {
                ui.warn(SYNTHETIC_WARNING);
                Ok((Arc::new(Synthetic::new(inputs, &self.synthetic_spec()?).map_err(Failure::bad_input)?), true))
            }
        }
    }

    /// The calibration samples: all of them, or the `--calibration-split` share.
    pub fn calibration_source(&self, inputs: &[InputSpec], ui: &Ui) -> Result<SharedSource, Failure> {
        Ok(self.split(inputs, None, self.calibration_split, ui)?.calibration)
    }

    /// Calibration and evaluation samples: with `eval`, all of `--data` calibrates and `eval`
    /// evaluates; otherwise the first `default_percent`% (or `--calibration-split`) of the
    /// samples calibrate and the rest evaluate.
    pub fn split(
        &self,
        inputs: &[InputSpec],
        eval: Option<&std::path::Path>,
        default_percent: Option<f64>,
        ui: &Ui,
    ) -> Result<Split, Failure> {
        let (all, synthetic) = self.all_samples(inputs, ui)?;
        if let Some(e) = eval {
            let eval = data::open(e, inputs).map_err(Failure::bad_input)?;
            return Ok(Split { calibration: all, evaluation: Some(eval), synthetic });
        }
        match self.calibration_split.or(default_percent) {
            Some(pct) => {
                let h = held_apart(all, pct, None).map_err(Failure::bad_input)?;
                let evaluation: Option<SharedSource> =
                    (!h.evaluation.indices().is_empty()).then(|| Arc::new(h.evaluation) as SharedSource);
                Ok(Split { calibration: Arc::new(h.calibration), evaluation, synthetic })
            }
            None => Ok(Split { calibration: all, evaluation: None, synthetic }),
        }
    }
}
