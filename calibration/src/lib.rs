//! kiln-calibration: activation ranges for quantization, computed from calibration data.
//!
//! - [`data`]: samples streamed from folders or stacked files (or generated), checked against
//!   the model's inputs, split into shards and held-apart evaluation sets.
//! - [`observe`]: streaming statistics per tensor — exact min/max and a histogram on a
//!   power-of-two grid whose merge is exact, so results do not depend on batch size, sample
//!   order or sharding — and the methods that turn them into ranges.
//! - [`collect`]: runs the model with the observed tensors exposed, group by group.
//! - `lift`: values inside If branches and Loop bodies exposed for observation.
//! - [`ranges`]: the serializable, mergeable result.

pub mod channels;
pub mod collect;
pub mod data;
pub mod gram;
mod lift;
pub mod observe;
pub mod ranges;
pub mod tile;

pub use collect::{CalibError, CollectOptions, collect, float_activations};
pub use data::{DataError, Sample, SampleSource, SharedSource};
pub use observe::{Histogram, Method, MinMax, MovingMinMax, TensorObserver};
pub use ranges::{Ranges, RangesError, TensorRange};
