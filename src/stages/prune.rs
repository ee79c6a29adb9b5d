//! Structured pruning: channels, FFN neurons, attention heads. The work is in
//! `kiln_passes::prune`; this maps options to it.

use kiln_compiler::ir::Model;

use super::{StageContext, StageError, StageReport};

/// Pruning options (`--prune channels:0.3,heads:0.25,ffn:0.2`).
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Share of prunable conv channels to remove.
    pub channels: f64,
    /// Share of attention heads to remove.
    pub heads: f64,
    /// Share of FFN neurons to remove.
    pub ffn: f64,
}

impl PruneOptions {
    /// Parses `channels:0.3,heads:0.25,ffn:0.2` (any subset).
    pub fn parse(text: &str) -> Result<PruneOptions, String> {
        let mut o = PruneOptions::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once(':').ok_or_else(|| format!("'{part}': expected KIND:RATIO"))?;
            let r: f64 = v.trim().parse().map_err(|_| format!("'{part}': RATIO is not a number"))?;
            if !(0.0..1.0).contains(&r) {
                return Err(format!("'{part}': RATIO must be at least 0 and below 1"));
            }
            match k.trim() {
                "channels" => o.channels = r,
                "heads" => o.heads = r,
                "ffn" => o.ffn = r,
                other => return Err(format!("'{other}': expected channels, heads or ffn")),
            }
        }
        Ok(o)
    }
}

pub fn run(_model: &mut Model, _options: &PruneOptions, _cx: &StageContext) -> Result<StageReport, StageError> {
    Err(StageError::bad_input("prune", "structured pruning is being built on its branch"))
}
