//! The precision options shared by `optimize` and `optimize sensitivity`.

use kiln::calibration::Method;
use kiln::pipeline::Precision;
use kiln::stages::half::{HalfKind, HalfOptions};
use kiln::stages::int4::{Int4Method, Int4Options};
use kiln::stages::int8::{Int8Options, SmoothOption};

use crate::Failure;

#[derive(clap::Args)]
pub struct PrecisionArgs {
    /// Numeric precision of the artifact.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionArg,
    /// INT8: quantize activations at run time (no calibration data needed).
    #[arg(long)]
    pub dynamic: bool,
    /// INT8: how activation ranges are computed: minmax, percentile:99.99, entropy or mse.
    #[arg(long, default_value = "minmax", value_name = "METHOD")]
    pub calibration: String,
    /// INT4: weights per block along K (16 to 256).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub block: usize,
    /// INT4: how weights are rounded.
    #[arg(long, value_enum, default_value = "rtn")]
    pub int4_method: Int4MethodArg,
    /// INT4: store large embedding tables in 4 bits too (GatherBlockQuantized, blocked along
    /// the embedding width; ONNX Runtime targets).
    #[arg(long)]
    pub int4_embeddings: bool,
    /// INT8 static: SmoothQuant before calibration, migrating MatMul input outliers into the
    /// weights; ALPHA in [0, 1] everywhere, or `auto` to choose it per MatMul input.
    #[arg(long, value_name = "ALPHA|auto", num_args = 0..=1, default_missing_value = "auto")]
    pub smooth_quant: Option<String>,
    /// INT8 static on cpu: time candidate forms against FP32 and keep the fastest that is not
    /// slower (machine-dependent: the manifest records the chosen form).
    #[arg(long)]
    pub tune: bool,
    /// Leave these nodes (by name) or op types in their original precision (repeatable).
    #[arg(long, value_name = "NODE|OP")]
    pub exclude: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    Fp16,
    Bf16,
    Int8,
    Int4,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Int4MethodArg {
    Rtn,
    Gptq,
    Awq,
    Learned,
}

impl PrecisionArgs {
    /// The precision stage the arguments ask for.
    pub fn precision(&self) -> Result<Precision, Failure> {
        let args = self;
        let exclude = args.exclude.clone();
        if args.precision != PrecisionArg::Int8 && (args.smooth_quant.is_some() || args.tune) {
            return Err(Failure::bad_input("--smooth-quant and --tune apply to --precision int8"));
        }
        Ok(match args.precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Fp16 | PrecisionArg::Bf16 => {
                let kind = if args.precision == PrecisionArg::Fp16 { HalfKind::F16 } else { HalfKind::Bf16 };
                Precision::Half(HalfOptions { exclude, ..HalfOptions::new(kind) })
            }
            PrecisionArg::Int8 => {
                let method = Method::parse(&args.calibration)
                    .map_err(|e| Failure::bad_input(format!("--calibration {}: {e}", args.calibration)))?;
                let smooth = match args.smooth_quant.as_deref() {
                    None => SmoothOption::Off,
                    Some("auto") => SmoothOption::Auto,
                    Some(a) => match a.parse::<f64>() {
                        Ok(v) if (0.0..=1.0).contains(&v) => SmoothOption::Alpha(v),
                        _ => {
                            return Err(Failure::bad_input(format!(
                                "--smooth-quant {a}: expected auto or a number in [0, 1]"
                            )));
                        }
                    },
                };
                if args.dynamic && (smooth != SmoothOption::Off || args.tune) {
                    return Err(Failure::bad_input("--smooth-quant and --tune apply to static INT8, not --dynamic"));
                }
                Precision::Int8(Int8Options { dynamic: args.dynamic, method, exclude, smooth, tune: args.tune })
            }
            PrecisionArg::Int4 => {
                let method = match args.int4_method {
                    Int4MethodArg::Rtn => Int4Method::Rtn,
                    Int4MethodArg::Gptq => Int4Method::Gptq,
                    Int4MethodArg::Awq => Int4Method::Awq,
                    Int4MethodArg::Learned => Int4Method::Learned,
                };
                Precision::Int4(Int4Options {
                    block: args.block,
                    method,
                    exclude,
                    embeddings: args.int4_embeddings,
                    ..Int4Options::default()
                })
            }
        })
    }

    /// Whether the stage needs calibration samples (with `--data` given, FP16 uses them to
    /// keep out-of-range tensors in FP32).
    pub fn needs_data(&self, precision: &Precision, data_given: bool) -> bool {
        match precision {
            Precision::Int8(o) => !o.dynamic,
            Precision::Int4(o) => o.method != Int4Method::Rtn,
            Precision::Half(_) => data_given,
            Precision::Fp32 => false,
        }
    }
}
