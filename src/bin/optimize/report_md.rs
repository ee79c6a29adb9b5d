//! `report.md`: the artifact's manifest written for people: summary, target check, passes,
//! stages, warnings and accuracy when measured. Rendered from the manifest's JSON so the two
//! never disagree; deterministic like the manifest.

use std::fmt::Write;

use serde_json::Value as Json;

fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "—".into(),
        other => other.to_string(),
    }
}

/// Escapes a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn num(v: &Json) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Renders the report.
pub fn render(m: &Json) -> String {
    let mut o = String::new();
    let input = &m["input"];
    let model = &m["model"];
    let _ = writeln!(o, "# Kiln artifact: {}\n", text(&input["file"]));
    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let rows = [
        ("Input", format!("`{}` (sha256 `{}`)", text(&input["file"]), text(&input["sha256"]))),
        ("Output", format!("`{}` (sha256 `{}`)", text(&model["file"]), text(&model["sha256"]))),
        ("Target", text(&m["target"])),
        ("Optimization level", text(&m["opt_level"])),
        ("Precision", text(&m["precision"])),
        ("Nodes", format!("{} → {}", num(&input["nodes"]), num(&model["nodes"]))),
        ("Kiln", text(&m["kiln_version"])),
    ];
    for (k, v) in rows {
        let _ = writeln!(o, "| {k} | {} |", cell(&v));
    }
    if let Some(files) = m["target_files"].as_array().filter(|f| !f.is_empty()) {
        let names: Vec<String> = files.iter().map(|f| format!("`{}`", text(f))).collect();
        let _ = writeln!(o, "| Target files | {} |", names.join(", "));
    }

    // Op histogram changes.
    if let (Some(before), Some(after)) = (input["op_histogram"].as_object(), model["op_histogram"].as_object()) {
        let mut ops: Vec<&String> = before.keys().chain(after.keys()).collect();
        ops.sort();
        ops.dedup();
        let changed: Vec<_> = ops
            .into_iter()
            .filter_map(|op| {
                let (b, a) = (before.get(op).map_or(0, num), after.get(op).map_or(0, num));
                (a != b).then_some((op, b, a))
            })
            .collect();
        if !changed.is_empty() {
            let _ = writeln!(o, "\n## Ops that changed\n\n| op | before | after |\n|---|---:|---:|");
            for (op, b, a) in changed {
                let _ = writeln!(o, "| {} | {b} | {a} |", cell(op));
            }
        }
    }

    let lint = &m["lint"];
    if lint.is_object() {
        let c = &lint["compute"];
        let _ = writeln!(o, "\n## Target check ({})\n", text(&lint["target"]));
        let share = c["int8_share"].as_f64().unwrap_or(0.0) * 100.0;
        let at = match c["shapes"].as_object().filter(|s| !s.is_empty()) {
            Some(shapes) => {
                let parts: Vec<String> = shapes
                    .iter()
                    .map(|(k, v)| {
                        let dims: Vec<String> = v.as_array().map(|d| d.iter().map(text).collect()).unwrap_or_default();
                        format!("{k}={}", dims.join("x"))
                    })
                    .collect();
                format!("at input shapes {}", parts.join(", "))
            }
            None => "at the declared shapes, symbolic dims as 1".to_string(),
        };
        let _ = writeln!(
            o,
            "Compute: {} FLOPs estimated from shapes ({at}); {share:.1}% runs in INT8; {} FLOPs use 4-bit weights.",
            num(&c["total_flops"]),
            num(&c["int4_weight_flops"])
        );
        if let Some(unknown) = c["unknown_shape_nodes"].as_array().filter(|u| !u.is_empty()) {
            let _ = writeln!(o, "\n{} compute nodes have unknown shapes and count as 0.", unknown.len());
        }
        for (title, key) in [("Errors", "errors"), ("Warnings", "warnings")] {
            let Some(list) = lint[key].as_array().filter(|l| !l.is_empty()) else { continue };
            let _ = writeln!(o, "\n{title}:\n");
            for f in list {
                let _ = writeln!(o, "- `{}`: {}", text(&f["rule"]), text(&f["message"]));
            }
        }
        if lint["errors"].as_array().is_some_and(Vec::is_empty)
            && lint["warnings"].as_array().is_some_and(Vec::is_empty)
        {
            let _ = writeln!(o, "\nThe QDQ linter found nothing to report.");
        }
    }

    if let Some(passes) = m["passes"].as_array().filter(|p| !p.is_empty()) {
        let _ = writeln!(o, "\n## Passes\n\n| pass | iteration | nodes | applied |\n|---|---:|---|---|");
        for p in passes {
            let applied: Vec<String> = p["applied"]
                .as_object()
                .map(|a| a.iter().map(|(k, v)| format!("{k} ×{}", num(v))).collect())
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "| {} | {} | {} → {} | {} |",
                cell(&text(&p["pass"])),
                num(&p["iteration"]),
                num(&p["nodes_before"]),
                num(&p["nodes_after"]),
                cell(&applied.join(", "))
            );
        }
    }
    let excluded: Vec<String> =
        m["target_excluded"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
    let disabled: Vec<String> = m["disabled"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
    if !excluded.is_empty() || !disabled.is_empty() {
        let _ = writeln!(o);
        for e in excluded {
            let _ = writeln!(o, "- left out for the target: {e}");
        }
        for d in disabled {
            let _ = writeln!(o, "- disabled on request: {d}");
        }
    }

    if let Some(stages) = m["stages"].as_array().filter(|s| !s.is_empty()) {
        let _ = writeln!(o, "\n## Stages");
        for s in stages {
            let _ = writeln!(o, "\n### {}\n", text(&s["stage"]));
            if let Some(facts) = s["facts"].as_object() {
                for (k, v) in facts {
                    let _ = writeln!(o, "- {k}: {}", text(v));
                }
            }
            if let Some(d) = s["decisions"].as_object().filter(|d| !d.is_empty()) {
                let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
                for v in d.values() {
                    *counts.entry(text(v)).or_insert(0) += 1;
                }
                let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
                let _ = writeln!(o, "- nodes: {}", parts.join(", "));
            }
        }
    }

    let v = &m["validation"];
    if v.is_object() {
        let verdict = if v["pass"].as_bool() == Some(true) { "passed" } else { "FAILED" };
        let _ = writeln!(o, "\n## Accuracy\n");
        let _ = writeln!(
            o,
            "Validation against the original on {}, {} samples of {}{}: {verdict}, tolerance `{}`.\n",
            text(&v["executor"]),
            num(&v["data"]["samples"]),
            text(&v["data"]["source"]),
            if v["data"]["synthetic"].as_bool() == Some(true) { " (synthetic)" } else { "" },
            text(&v["tolerance"])
        );
        if let Some(checks) = v["checks"].as_array().filter(|c| !c.is_empty()) {
            let _ = writeln!(o, "| check | value | needs | |\n|---|---:|---|---|");
            for c in checks {
                let ok = if c["pass"].as_bool() == Some(true) { "ok" } else { "FAIL" };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} {} | {ok} |",
                    cell(&text(&c["name"])),
                    text(&c["value"]),
                    text(&c["comparison"]),
                    text(&c["threshold"])
                );
            }
        }
    } else if m.get("validation").is_some() {
        let _ = writeln!(o, "\n## Accuracy\n\nNot validated (--skip-validation).");
    }

    if let Some(w) = m["warnings"].as_array().filter(|w| !w.is_empty()) {
        let _ = writeln!(o, "\n## Warnings\n");
        for x in w {
            let _ = writeln!(o, "- {}", text(x));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section_from_the_manifest() {
        let m = serde_json::json!({
            "kiln_version": "0.1.0",
            "input": {"file": "m.onnx", "sha256": "ab", "nodes": 5, "op_histogram": {"Conv": 2, "Relu": 2, "Add": 1}},
            "model": {"file": "model.onnx", "sha256": "cd", "nodes": 3, "op_histogram": {"Conv": 2, "Add": 1}},
            "target": "tensorrt", "opt_level": "O2", "precision": "int8",
            "target_files": ["tensorrt.json", "trtexec.sh"],
            "lint": {"target": "tensorrt", "errors": [], "warnings": [{"rule": "lone-qdq", "message": "'q' only rounds"}],
                     "compute": {"total_flops": 1000, "int8_flops": 750, "int4_weight_flops": 0, "int8_share": 0.75,
                                 "unknown_shape_nodes": [], "shapes": {"x": [1, 3, 48, 192]}}},
            "passes": [{"pass": "fuse-portable", "iteration": 1, "nodes_before": 5, "nodes_after": 3,
                        "applied": {"conv-relu": 2}}],
            "target_excluded": [], "disabled": [],
            "stages": [{"stage": "int8", "facts": {"nodes_quantized": 2}, "decisions": {"a": "int8", "b": "int8"}}],
            "validation": {"executor": "onnxruntime", "data": {"source": "eval", "samples": 4, "synthetic": false}, "tolerance": "*:cosine>=0.99", "pass": true,
                           "checks": [{"name": "y:cosine", "value": 0.999, "comparison": ">=", "threshold": 0.99, "pass": true}]},
            "warnings": ["synthetic calibration data"]
        });
        let r = render(&m);
        for want in [
            "# Kiln artifact: m.onnx",
            "| Nodes | 5 → 3 |",
            "| Relu | 2 | 0 |",
            "at input shapes x=1x3x48x192); 75.0% runs in INT8",
            "`lone-qdq`: 'q' only rounds",
            "| fuse-portable | 1 | 5 → 3 | conv-relu ×2 |",
            "- nodes: 2 int8",
            "| y:cosine | 0.999 | >= 0.99 | ok |",
            "passed, tolerance `*:cosine>=0.99`",
            "- synthetic calibration data",
            "`tensorrt.json`",
        ] {
            assert!(r.contains(want), "missing {want:?} in\n{r}");
        }
        // A manifest without lint, stages or accuracy renders without those sections.
        let bare = render(&serde_json::json!({"input": {}, "model": {}}));
        assert!(!bare.contains("## Target check") && !bare.contains("## Accuracy"), "{bare}");
    }
}
