//! Structured pruning: channels, FFN neurons, attention heads. The work is in
//! `kiln_passes::prune`; this maps options to it and its result to a [`StageReport`].

use kiln_compiler::ir::Model;
use kiln_passes::prune::{PruneConfig, PruneError, Scope, prune};

use super::{StageContext, StageError, StageReport};

/// Pruning options: `kiln_passes::prune::PruneConfig`, parsed from `--prune` by
/// [`PruneConfig::parse`].
pub type PruneOptions = PruneConfig;

/// Prunes the model and reports parameters and FLOPs before and after, every group pruned or
/// skipped (with the reason), and per node what it lost.
pub fn run(model: &mut Model, options: &PruneOptions, cx: &StageContext) -> Result<StageReport, StageError> {
    // FLOPs are estimated at the shapes of the first calibration sample, when there is one.
    let sample = cx.calibration.as_ref().filter(|s| !s.is_empty()).and_then(|s| s.read(0).ok());
    let from_data: Vec<(String, Vec<usize>)> =
        sample.map(|s| s.inputs.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())).collect()).unwrap_or_default();
    let (shapes, flops_at) = if !options.input_shapes.is_empty() {
        (options.input_shapes.clone(), format!("the given input shapes {:?}", options.input_shapes))
    } else if !from_data.is_empty() {
        let at = format!("the input shapes of the first data sample {from_data:?}");
        (from_data, at)
    } else {
        (Vec::new(), "the model's declared input shapes (unknown dimensions count as 1)".to_string())
    };
    let config = PruneConfig { input_shapes: shapes, ..options.clone() };
    let r = prune(model, &config).map_err(|e| match e {
        PruneError::Option(_) => StageError::bad_input("prune", e),
        _ => StageError::runtime("prune", e),
    })?;
    let mut report = StageReport::new("prune");
    report.fact("importance", format!("weight magnitude ({:?}, BatchNormalization scale included)", options.norm));
    report.fact("align", options.align);
    report.fact("scope", if options.scope == Scope::Global { "global" } else { "per layer" });
    report
        .fact("ratios", serde_json::json!({"channels": options.channels, "heads": options.heads, "ffn": options.ffn}));
    report.fact("parameters_before", r.parameters_before);
    report.fact("parameters_after", r.parameters_after);
    report.fact("flops_before", r.flops_before);
    report.fact("flops_after", r.flops_after);
    report.fact("flops_estimated_at", flops_at);
    let pruned: Vec<serde_json::Value> = r
        .pruned()
        .map(|g| serde_json::json!({"kind": g.kind, "layers": g.layers, "removed": g.removed, "size": g.size}))
        .collect();
    let skipped: Vec<serde_json::Value> = r
        .skipped()
        .map(|g| serde_json::json!({"kind": g.kind, "layers": g.layers, "size": g.size, "reason": g.skipped}))
        .collect();
    report.fact("groups_pruned", pruned.len());
    report.fact("groups_skipped", skipped.len());
    report.fact("pruned", pruned);
    report.fact("skipped", skipped);
    if r.pruned().next().is_none() {
        report.warnings.push("prune: nothing was pruned (see `skipped` in the prune stage's facts)".to_string());
    }
    report.decisions = r.decisions;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_passes::prune::Norm;

    #[test]
    fn parses_ratios_and_settings() {
        let o =
            PruneOptions::parse("channels:0.3, heads:0.25,ffn:0.2,importance:l2,scope:global,protect:none").unwrap();
        assert_eq!((o.channels, o.heads, o.ffn), (0.3, 0.25, 0.2));
        assert_eq!((o.norm, o.scope, o.protect_ends), (Norm::L2, Scope::Global, false));
        assert!(PruneOptions::parse("channels:1.0").is_err());
        assert!(PruneOptions::parse("filters:0.1").is_err());
        assert!(PruneOptions::parse("importance:taylor").is_err());
        assert!(PruneOptions::parse("channels").is_err());
    }
}
