//! The check report for people and CI: a table, JUnit XML.

use std::fmt::Write as _;

use super::{CheckKind, CheckReport, fmt_num};

/// Escapes text for XML attribute values and character data. Characters XML 1.0 cannot hold
/// (most control characters) become U+FFFD; line breaks and tabs in attributes become
/// character references so parsers keep them.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The report as JUnit XML: one test suite, one test case per check (output × metric, baseline
/// comparisons, latency, size), failures with their message.
pub fn junit_xml(report: &CheckReport) -> String {
    let failures = report.failures().count();
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"optimize check\" tests=\"{}\" failures=\"{failures}\" errors=\"0\">",
        report.checks.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">",
        xml_escape(&format!("check {}", report.candidate.path)),
        report.checks.len()
    );
    x.push_str("    <properties>\n");
    let mut props = vec![
        ("reference", report.reference.path.clone()),
        ("reference.sha256", report.reference.sha256.clone()),
        ("candidate", report.candidate.path.clone()),
        ("candidate.sha256", report.candidate.sha256.clone()),
        ("executor", report.executor.clone()),
        ("data", report.data.source.clone()),
        ("tolerance", report.tolerance.clone()),
        ("kiln.version", report.kiln_version.clone()),
    ];
    if let Some(b) = &report.baseline {
        props.push(("baseline", b.path.clone()));
    }
    for (k, v) in props {
        let _ = writeln!(x, "      <property name=\"{}\" value=\"{}\"/>", xml_escape(k), xml_escape(&v));
    }
    x.push_str("    </properties>\n");
    for c in &report.checks {
        let class = match c.kind {
            CheckKind::Accuracy => "kiln.check.accuracy",
            CheckKind::Baseline => "kiln.check.baseline",
            CheckKind::Latency => "kiln.check.latency",
            CheckKind::Size => "kiln.check.size",
        };
        let _ = write!(x, "    <testcase classname=\"{class}\" name=\"{}\" time=\"0\"", xml_escape(&c.name));
        if c.pass {
            x.push_str("/>\n");
        } else {
            let _ = writeln!(
                x,
                ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                xml_escape(&c.message),
                class,
                xml_escape(&c.message)
            );
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// The human-readable summary: one line per check, then latency, size and the verdict.
pub fn render_table(report: &CheckReport) -> String {
    let mut rows: Vec<[String; 5]> =
        vec![["check".into(), "value".into(), "needs".into(), "result".into(), String::new()]];
    for c in &report.checks {
        rows.push([
            c.name.clone(),
            fmt_num(c.value.0),
            format!("{} {}", c.comparison, fmt_num(c.threshold.0)),
            if c.pass { "ok".into() } else { "FAIL".into() },
            String::new(),
        ]);
    }
    let widths: Vec<usize> = (0..4).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    let _ = writeln!(out, "reference {} ({} bytes)", report.reference.path, report.reference.bytes);
    let _ = writeln!(out, "candidate {} ({} bytes)", report.candidate.path, report.candidate.bytes);
    let _ = writeln!(out, "data: {}; executor: {}", report.data.source, report.executor);
    if report.data.synthetic {
        let _ = writeln!(out, "note: synthetic inputs; pass --data for real samples");
    }
    for r in &rows {
        let _ = writeln!(
            out,
            "  {:<w0$}  {:>w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    for o in &report.outputs {
        if let Some(why) = &o.skipped {
            let _ = writeln!(out, "  {}: not compared ({why})", o.name);
        }
    }
    if let Some(l) = &report.latency {
        let _ = writeln!(
            out,
            "latency: reference {:.3} ms, candidate {:.3} ms, ratio {:.3} (median of {} runs after {} warm-up)",
            l.reference_ms, l.candidate_ms, l.ratio, l.runs, l.warmup_runs
        );
    }
    let _ = writeln!(
        out,
        "size: reference {} bytes, candidate {} bytes, ratio {:.4}",
        report.size.reference_bytes, report.size.candidate_bytes, report.size.ratio
    );
    if let Some(b) = &report.baseline {
        let _ = writeln!(out, "baseline: {}", b.path);
    }
    let failed = report.failures().count();
    if report.pass {
        let _ = writeln!(out, "PASS: {} checks", report.checks.len());
    } else {
        let _ = writeln!(out, "FAIL: {failed} of {} checks failed", report.checks.len());
    }
    out
}
