//! The sensitivity ranking as an SVG bar chart: one bar per node, most sensitive at the top,
//! its length the noise the node alone adds (−SQNR in dB, so longer is worse), coloured by op
//! type, with the plain candidate's noise as a reference line. Plain SVG, no dependency, and
//! deterministic text (same report, same bytes).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::SensitivityReport;

const ROW: f64 = 18.0;
const LABEL: f64 = 330.0;
const BAR: f64 = 480.0;
const TOP: f64 = 56.0;
const PALETTE: [&str; 8] = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Noise in dB above a floor, for bar lengths: −SQNR, so 60 dB SQNR is −60.
fn noise_db(sqnr: f64) -> f64 {
    if sqnr.is_finite() {
        -sqnr
    } else if sqnr > 0.0 {
        -200.0
    } else {
        200.0
    }
}

/// Renders the report as an SVG document.
pub fn svg(report: &SensitivityReport) -> String {
    let layers = &report.layers;
    let reference = noise_db(report.all_lowered.sqnr_db);
    let values: Vec<f64> = layers.iter().map(|l| noise_db(l.sqnr_db)).collect();
    let hi = values.iter().copied().chain([reference]).fold(f64::NEG_INFINITY, f64::max).ceil();
    let lo = values.iter().copied().chain([reference]).fold(f64::INFINITY, f64::min).floor() - 5.0;
    let span = (hi - lo).max(1.0);
    let x = |v: f64| LABEL + (v - lo) / span * BAR;
    let mut colours: BTreeMap<&str, &str> = BTreeMap::new();
    for l in layers {
        let n = colours.len();
        colours.entry(l.op_type.as_str()).or_insert(PALETTE[n % PALETTE.len()]);
    }
    let height = TOP + ROW * layers.len() as f64 + 40.0 + 16.0 * colours.len() as f64;
    let width = LABEL + BAR + 120.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">{} sensitivity: noise each node alone adds to the outputs ({} samples)</text>"#,
        escape(report.precision),
        report.samples
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">bar: -SQNR of the worst output in dB (longer is worse); red line: every node lowered ({:.1} dB SQNR)</text>"##,
        report.all_lowered.sqnr_db
    );
    for (i, (l, v)) in layers.iter().zip(&values).enumerate() {
        let y = TOP + ROW * i as f64;
        let colour = colours.get(l.op_type.as_str()).copied().unwrap_or(PALETTE[0]);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL - 6.0,
            y + ROW * 0.7,
            escape(&format!("{} ({})", l.node, l.op_type))
        );
        let _ = writeln!(
            s,
            r#"<rect x="{LABEL}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}</title></rect>"#,
            y + 2.0,
            (x(*v) - LABEL).max(1.0),
            ROW - 4.0,
            escape(&format!("{}: SQNR {:.2} dB, cosine min {:.6}", l.node, l.sqnr_db, l.cosine_min))
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{:.1} dB</text>"#, x(*v) + 4.0, y + ROW * 0.7, l.sqnr_db);
    }
    let bottom = TOP + ROW * layers.len() as f64;
    let _ = writeln!(
        s,
        r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{bottom:.1}" stroke="#d62728" stroke-width="2"/>"##,
        x(reference)
    );
    for (i, (op, colour)) in colours.iter().enumerate() {
        let y = bottom + 24.0 + 16.0 * i as f64;
        let _ = writeln!(s, r#"<rect x="10" y="{:.1}" width="12" height="12" fill="{colour}"/>"#, y - 10.0);
        let _ = writeln!(s, r#"<text x="28" y="{y:.1}">{}</text>"#, escape(op));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensitivity::{LayerError, Mode};

    fn layer(node: &str, op: &str, sqnr: f64) -> LayerError {
        LayerError {
            node: node.into(),
            op_type: op.into(),
            sqnr_db: sqnr,
            cosine_min: 0.99,
            noise: 10f64.powf(-sqnr / 10.0),
        }
    }

    #[test]
    fn bars_are_ranked_escaped_and_longer_for_worse_layers() {
        let report = SensitivityReport {
            precision: "int8",
            mode: Mode::OnlyThis,
            samples: 4,
            all_lowered: layer("(all lowered)", "", 20.0),
            layers: vec![layer("conv<1>", "Conv", 25.0), layer("fc", "Gemm", 40.0), layer("c2", "Conv", f64::INFINITY)],
        };
        let svg = svg(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("conv&lt;1&gt; (Conv)") && !svg.contains("conv<1>"));
        let width = |node: &str| -> f64 {
            let at = svg.find(&format!("<title>{node}:")).unwrap();
            let rect = &svg[svg[..at].rfind("<rect").unwrap()..at];
            let w = rect.split("width=\"").nth(1).unwrap().split('"').next().unwrap();
            w.parse().unwrap()
        };
        assert!(width("conv&lt;1&gt;") > width("fc"), "25 dB SQNR is worse than 40 dB");
        assert!(width("fc") > width("c2"));
        // Two op types, two legend entries; the same report gives the same bytes.
        assert_eq!(svg.matches(r#"width="12" height="12""#).count(), 2);
        assert_eq!(svg, super::svg(&report));
    }
}
