//! The report: rows, Kiln's ratios against its peers, their geometric means, the printed tables.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::measure::Accuracy;
use super::measure::Latency;
use super::tools::{OPT_TIME_BASELINES, all_tools};
use super::{Options, clip};

/// One tool on one fixture (or the original model).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Row {
    pub(super) tool: String,
    pub(super) group: String,
    pub(super) peer: bool,
    /// `ok`, `failed: …` (the tool), `ORT failed: …` (the model does not run), or
    /// `mismatch: …` (outputs differ from the original's beyond the tolerance).
    pub(super) status: String,
    /// Median optimize wall time over the repeats, seconds.
    pub(super) optimize_s: Option<f64>,
    pub(super) optimize_runs_s: Vec<f64>,
    /// Largest peak resident set of the tool's process over the repeats, MiB.
    pub(super) optimize_peak_rss_mib: Option<f64>,
    pub(super) model: Option<PathBuf>,
    pub(super) model_bytes: Option<u64>,
    pub(super) max_abs_diff: Option<f64>,
    /// Per output: agreement with the original over the evaluation samples (measure.py).
    pub(super) accuracy: BTreeMap<String, Accuracy>,
    /// By intra-op thread count.
    pub(super) latency: BTreeMap<String, Latency>,
    /// Median latency divided by the original's, by thread count.
    pub(super) latency_vs_original: BTreeMap<String, f64>,
}

impl Row {
    /// A row with nothing measured yet, status `ok`.
    pub(super) fn new(tool: &str, group: &str, peer: bool) -> Row {
        Row {
            tool: tool.into(),
            group: group.into(),
            peer,
            status: "ok".into(),
            optimize_s: None,
            optimize_runs_s: Vec::new(),
            optimize_peak_rss_mib: None,
            model: None,
            model_bytes: None,
            max_abs_diff: None,
            accuracy: BTreeMap::new(),
            latency: BTreeMap::new(),
            latency_vs_original: BTreeMap::new(),
        }
    }

    pub(super) fn ok(&self) -> bool {
        self.status == "ok"
    }
}

/// The comparisons the issue asks for, per fixture and group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Ratios {
    pub(super) group: String,
    pub(super) kiln: String,
    /// Kiln's row status (`ok`, `failed: …`, …).
    pub(super) status: String,
    /// By thread count: Kiln's median latency over the fastest working peer's.
    pub(super) latency_vs_best_peer: BTreeMap<String, BestPeer>,
    /// By fp32 baseline peer ([`OPT_TIME_BASELINES`]): Kiln's optimize time over the peer's.
    pub(super) optimize_time_vs: BTreeMap<String, f64>,
    /// Kiln's worst output on the evaluation samples.
    pub(super) accuracy: Option<WorstAccuracy>,
    /// By peer of the group, in row order: Kiln against that peer.
    pub(super) vs_peers: Vec<PeerRatios>,
}

/// The least accurate output of a row: lowest `cosine_min`, with that output's argmax
/// agreement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct WorstAccuracy {
    pub(super) output: String,
    pub(super) cosine_min: f64,
    pub(super) top1: Option<f64>,
}

/// Kiln's row over one peer's, on one fixture (below 1: Kiln takes less). A ratio is left
/// out where either side has no number; the peer's status says whether it counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct PeerRatios {
    pub(super) peer: String,
    pub(super) peer_status: String,
    pub(super) optimize_time: Option<f64>,
    pub(super) peak_rss: Option<f64>,
    /// By thread count: Kiln's median latency over the peer's.
    pub(super) latency: BTreeMap<String, f64>,
    pub(super) peer_accuracy: Option<WorstAccuracy>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct BestPeer {
    pub(super) peer: String,
    pub(super) ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct FixtureReport {
    pub(super) name: String,
    pub(super) model: PathBuf,
    pub(super) rows: Vec<Row>,
    pub(super) ratios: Vec<Ratios>,
}

/// Geometric means of the per-fixture ratios.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Summary {
    pub(super) group: String,
    pub(super) kiln: String,
    pub(super) latency_vs_best_peer_geomean: BTreeMap<String, f64>,
    pub(super) optimize_time_vs_geomean: BTreeMap<String, f64>,
    /// By peer: geometric means over the fixtures where both rows are `ok`.
    pub(super) vs_peers_geomean: Vec<PeerGeomean>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct PeerGeomean {
    pub(super) peer: String,
    /// Fixtures that went into the means.
    pub(super) fixtures: usize,
    pub(super) optimize_time: Option<f64>,
    pub(super) peak_rss: Option<f64>,
    pub(super) latency: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) schema_version: u32,
    pub(super) total_seconds: f64,
    pub(super) machine: BTreeMap<String, String>,
    pub(super) python: String,
    pub(super) packages: BTreeMap<String, Option<String>>,
    pub(super) kiln: BTreeMap<String, String>,
    pub(super) settings: Options,
    pub(super) session_options: BTreeMap<String, String>,
    pub(super) fixtures: Vec<FixtureReport>,
    pub(super) summary: Vec<Summary>,
}

/// Kiln's rows against the peers of their group.
pub(super) fn ratios(rows: &[Row]) -> Vec<Ratios> {
    let mut groups: Vec<&str> = all_tools().map(|t| t.group).collect();
    groups.dedup();
    let mut out = Vec::new();
    for group in groups {
        let in_group = || rows.iter().filter(move |r| r.group == group);
        for kiln in in_group().filter(|r| !r.peer) {
            let peers: Vec<&Row> = in_group().filter(|r| r.peer && r.ok()).collect();
            let mut latency_vs_best_peer = BTreeMap::new();
            if kiln.ok() {
                for (threads, lat) in &kiln.latency {
                    let best = peers
                        .iter()
                        .filter_map(|p| Some((p, p.latency.get(threads)?.median_ms)))
                        .min_by(|a, b| a.1.total_cmp(&b.1));
                    if let Some((p, ms)) = best {
                        latency_vs_best_peer
                            .insert(threads.clone(), BestPeer { peer: p.tool.clone(), ratio: lat.median_ms / ms });
                    }
                }
            }
            let mut optimize_time_vs = BTreeMap::new();
            for base in OPT_TIME_BASELINES {
                let peer_time = in_group().find(|r| r.tool == *base).and_then(|r| r.optimize_s);
                if let (Some(k), Some(p)) = (kiln.optimize_s, peer_time) {
                    optimize_time_vs.insert(base.to_string(), k / p);
                }
            }
            let vs_peers = in_group().filter(|r| r.peer).map(|p| peer_ratios(kiln, p)).collect();
            out.push(Ratios {
                group: group.to_string(),
                kiln: kiln.tool.clone(),
                status: kiln.status.clone(),
                latency_vs_best_peer,
                optimize_time_vs,
                accuracy: worst_output(&kiln.accuracy),
                vs_peers,
            });
        }
    }
    out
}

fn peer_ratios(kiln: &Row, peer: &Row) -> PeerRatios {
    let over = |k: Option<f64>, p: Option<f64>| Some(k? / p.filter(|&p| p > 0.0)?);
    PeerRatios {
        peer: peer.tool.clone(),
        peer_status: peer.status.clone(),
        optimize_time: over(kiln.optimize_s, peer.optimize_s),
        // Only for runs that finished (a failed repeat may have left a peak behind).
        peak_rss: over(
            kiln.optimize_s.and(kiln.optimize_peak_rss_mib),
            peer.optimize_s.and(peer.optimize_peak_rss_mib),
        ),
        latency: kiln
            .latency
            .iter()
            .filter_map(|(t, l)| Some((t.clone(), over(Some(l.median_ms), Some(peer.latency.get(t)?.median_ms))?)))
            .collect(),
        peer_accuracy: worst_output(&peer.accuracy),
    }
}

/// The output with the lowest `cosine_min` (ties: the first by name).
pub(super) fn worst_output(accuracy: &BTreeMap<String, Accuracy>) -> Option<WorstAccuracy> {
    accuracy
        .iter()
        .filter_map(|(name, a)| Some((name, a.cosine_min?, a.top1)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, cosine_min, top1)| WorstAccuracy { output: name.clone(), cosine_min, top1 })
}

/// Geometric means over fixtures of each ratio.
pub(super) fn summarize(fixtures: &[FixtureReport]) -> Vec<Summary> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in fixtures.iter().flat_map(|f| &f.ratios) {
        if !keys.contains(&(r.group.clone(), r.kiln.clone())) {
            keys.push((r.group.clone(), r.kiln.clone()));
        }
    }
    keys.into_iter()
        .map(|(group, kiln)| {
            let mine: Vec<&Ratios> =
                fixtures.iter().flat_map(|f| &f.ratios).filter(|r| r.group == group && r.kiln == kiln).collect();
            let mut lat: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            let mut opt: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for r in &mine {
                for (t, b) in &r.latency_vs_best_peer {
                    lat.entry(t.clone()).or_default().push(b.ratio);
                }
                for (p, v) in &r.optimize_time_vs {
                    opt.entry(p.clone()).or_default().push(*v);
                }
            }
            let gm =
                |m: BTreeMap<String, Vec<f64>>| m.into_iter().filter_map(|(k, v)| Some((k, geomean(&v)?))).collect();
            let mut peers: Vec<&str> = Vec::new();
            for p in mine.iter().flat_map(|r| &r.vs_peers) {
                if !peers.contains(&p.peer.as_str()) {
                    peers.push(&p.peer);
                }
            }
            let vs_peers_geomean = peers
                .into_iter()
                .map(|peer| {
                    // Only fixtures where both made a working model: a failed row's time is
                    // not a comparison.
                    let both_ok: Vec<&PeerRatios> = mine
                        .iter()
                        .filter(|r| r.status == "ok")
                        .flat_map(|r| &r.vs_peers)
                        .filter(|p| p.peer == peer && p.peer_status == "ok")
                        .collect();
                    let of = |f: &dyn Fn(&PeerRatios) -> Option<f64>| {
                        let v: Vec<f64> = both_ok.iter().filter_map(|p| f(p)).collect();
                        if v.len() == both_ok.len() { geomean(&v) } else { None }
                    };
                    let mut lat: BTreeMap<String, Vec<f64>> = BTreeMap::new();
                    for p in &both_ok {
                        for (t, v) in &p.latency {
                            lat.entry(t.clone()).or_default().push(*v);
                        }
                    }
                    PeerGeomean {
                        peer: peer.to_string(),
                        fixtures: both_ok.len(),
                        optimize_time: of(&|p| p.optimize_time),
                        peak_rss: of(&|p| p.peak_rss),
                        latency: gm(lat),
                    }
                })
                .collect();
            Summary {
                group,
                kiln,
                latency_vs_best_peer_geomean: gm(lat),
                optimize_time_vs_geomean: gm(opt),
                vs_peers_geomean,
            }
        })
        .collect()
}

fn geomean(v: &[f64]) -> Option<f64> {
    if v.is_empty() || v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

pub(super) fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

pub(super) fn machine_info() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("os".into(), std::env::consts::OS.into());
    m.insert("arch".into(), std::env::consts::ARCH.into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    m.insert("cpus".into(), cpus.to_string());
    // The CPU model, where Linux tells it: timings mean little without it.
    if let Ok(info) = fs::read_to_string("/proc/cpuinfo")
        && let Some(name) = info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
    {
        m.insert("cpu".into(), name.trim().into());
    }
    m
}

/// The 1, 5 and 15 minute load averages, where Linux tells them.
pub(super) fn load_average() -> Option<String> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

pub(super) fn kiln_info(root: &Path, exe: &Path, opts: &Options) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("binary".into(), exe.display().to_string());
    m.insert("profile".into(), "release".into());
    m.insert("args".into(), opts.kiln_args.join(" "));
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        m.insert("commit".into(), if dirty { format!("{commit}+dirty") } else { commit });
    }
    m
}

pub(super) fn fmt_secs(s: f64) -> String {
    if s < 1.0 { format!("{:.0} ms", s * 1e3) } else { format!("{s:.2} s") }
}

fn fmt_ratio(r: f64) -> String {
    format!("{r:.2}x")
}

/// The printed tables.
/// The least accurate output's cosine (worst sample) and argmax agreement, for the table.
fn worst_accuracy(accuracy: &BTreeMap<String, Accuracy>) -> String {
    fmt_accuracy(worst_output(accuracy).as_ref())
}

fn fmt_accuracy(worst: Option<&WorstAccuracy>) -> String {
    match worst {
        None => "-".into(),
        Some(a) => {
            let mut text = format!("cos {:.5}", a.cosine_min);
            if let Some(t) = a.top1 {
                text.push_str(&format!(" top1 {t:.3}"));
            }
            text
        }
    }
}

/// The report as aligned text tables, for the terminal.
pub(super) fn render(report: &Report) -> String {
    render_with(report, format_table)
}

/// The report as Markdown tables (`report.md` beside `report.json`).
pub(super) fn render_markdown(report: &Report) -> String {
    let mut out = String::from("# Kiln benchmark\n");
    out.push_str(&render_with(report, markdown_table));
    out
}

fn render_with(report: &Report, format_table: fn(&[Vec<String>], usize) -> String) -> String {
    let threads: Vec<String> = report.settings.threads.iter().map(u32::to_string).collect();
    let mut header: Vec<String> =
        ["fixture", "tool", "optimize", "peak MiB", "MB"].iter().map(|s| s.to_string()).collect();
    for t in &threads {
        header.extend([format!("t{t} median ms"), format!("t{t} p90"), format!("t{t} vs orig")]);
    }
    header.extend(["max |diff|".to_string(), "accuracy (worst output)".to_string(), "status".to_string()]);
    let mut table = vec![header];
    for f in &report.fixtures {
        for (i, r) in f.rows.iter().enumerate() {
            let mut line = vec![
                if i == 0 { f.name.clone() } else { String::new() },
                r.tool.clone(),
                r.optimize_s.map_or("-".into(), fmt_secs),
                r.optimize_peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
                r.model_bytes.map_or("-".into(), |b| format!("{:.2}", b as f64 / 1e6)),
            ];
            for t in &threads {
                match r.latency.get(t) {
                    Some(l) => line.extend([
                        format!("{:.3}", l.median_ms),
                        format!("{:.3}", l.p90_ms),
                        r.latency_vs_original.get(t).map_or("-".into(), |x| fmt_ratio(*x)),
                    ]),
                    None => line.extend(["-".into(), "-".into(), "-".into()]),
                }
            }
            line.push(r.max_abs_diff.map_or("-".into(), |d| if d == 0.0 { "0".into() } else { format!("{d:.1e}") }));
            line.push(worst_accuracy(&r.accuracy));
            line.push(clip(&r.status, 100));
            table.push(line);
        }
    }
    let mut out =
        String::from("\nONNX Runtime CPU latency (ORT_ENABLE_ALL, 1 inter-op thread; tN = N intra-op threads)\n");
    out.push_str(&format_table(&table, 2));

    let mut header = vec!["fixture".to_string(), "kiln row".to_string()];
    for t in &threads {
        header.push(format!("t{t} latency vs best peer"));
    }
    for base in OPT_TIME_BASELINES {
        header.push(format!("optimize time vs {base}"));
    }
    let mut table = vec![header];
    let mut push_ratios = |name: &str, kiln: &str, lat: &dyn Fn(&str) -> String, opt: &dyn Fn(&str) -> String| {
        let mut line = vec![name.to_string(), kiln.to_string()];
        line.extend(threads.iter().map(|t| lat(t)));
        line.extend(OPT_TIME_BASELINES.iter().map(|b| opt(b)));
        table.push(line);
    };
    for f in &report.fixtures {
        for r in &f.ratios {
            push_ratios(
                &f.name,
                &r.kiln,
                &|t| {
                    r.latency_vs_best_peer.get(t).map_or("-".into(), |b| format!("{} ({})", fmt_ratio(b.ratio), b.peer))
                },
                &|b| r.optimize_time_vs.get(b).map_or("-".into(), |x| fmt_ratio(*x)),
            );
        }
    }
    for s in &report.summary {
        push_ratios(
            "geomean",
            &s.kiln,
            &|t| s.latency_vs_best_peer_geomean.get(t).map_or("-".into(), |x| fmt_ratio(*x)),
            &|b| s.optimize_time_vs_geomean.get(b).map_or("-".into(), |x| fmt_ratio(*x)),
        );
    }
    out.push_str("\nKiln relative to its peers (below 1x: Kiln is faster)\n");
    out.push_str(&format_table(&table, 2));
    out.push_str("\nKiln against each peer of its group (Kiln / peer; below 1x: Kiln takes less)\n");
    out.push_str(&format_table(&peer_table(report, &threads), 3));
    out
}

/// Per fixture, Kiln row and peer: time, peak RSS and latency ratios, both accuracies, the
/// peer's status; then the geometric means over fixtures where both rows are `ok`.
fn peer_table(report: &Report, threads: &[String]) -> Vec<Vec<String>> {
    let mut header: Vec<String> =
        ["fixture", "kiln row", "peer", "optimize time", "peak RSS"].iter().map(|s| s.to_string()).collect();
    header.extend(threads.iter().map(|t| format!("t{t} latency")));
    header.extend(["kiln accuracy", "peer accuracy", "peer status"].map(String::from));
    let ratio = |r: Option<f64>| r.map_or("-".into(), fmt_ratio);
    let mut table = vec![header];
    for f in &report.fixtures {
        for r in f.ratios.iter().filter(|r| !r.vs_peers.is_empty()) {
            for p in &r.vs_peers {
                let mut line = vec![f.name.clone(), r.kiln.clone(), p.peer.clone()];
                line.extend([ratio(p.optimize_time), ratio(p.peak_rss)]);
                line.extend(threads.iter().map(|t| ratio(p.latency.get(t).copied())));
                line.extend([fmt_accuracy(r.accuracy.as_ref()), fmt_accuracy(p.peer_accuracy.as_ref())]);
                line.push(clip(&p.peer_status, 60));
                table.push(line);
            }
        }
    }
    for s in &report.summary {
        for g in &s.vs_peers_geomean {
            let mut line = vec![format!("geomean ({} fixtures)", g.fixtures), s.kiln.clone(), g.peer.clone()];
            line.extend([ratio(g.optimize_time), ratio(g.peak_rss)]);
            line.extend(threads.iter().map(|t| ratio(g.latency.get(t).copied())));
            table.push(line);
        }
    }
    table
}

/// A Markdown table: the first row is the header; the first `left` columns align left, the
/// rest right. A blank line before it, so it follows a paragraph.
fn markdown_table(rows: &[Vec<String>], left: usize) -> String {
    let Some(header) = rows.first() else { return String::new() };
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let cell = |s: &str| s.replace('|', "\\|");
    let line = |r: &[String]| {
        let cells: Vec<String> = (0..cols).map(|c| cell(r.get(c).map_or("", String::as_str))).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = String::from("\n");
    out.push_str(&line(header));
    let rule: Vec<&str> = (0..cols).map(|c| if c < left { ":--" } else { "--:" }).collect();
    out.push_str(&format!("| {} |\n", rule.join(" | ")));
    for r in &rows[1..] {
        out.push_str(&line(r));
    }
    out
}

/// Left-aligns the first `left` columns and right-aligns the rest; the last column is not padded.
fn format_table(rows: &[Vec<String>], left: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c + 1 == r.len() {
                    s.clone()
                } else if c < left {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: &str, peer: bool, status: &str, opt: Option<f64>, t1: Option<f64>) -> Row {
        Row {
            status: status.into(),
            optimize_s: opt,
            optimize_runs_s: opt.into_iter().collect(),
            latency: t1
                .map(|ms| ("1".to_string(), Latency { median_ms: ms, p90_ms: ms, min_ms: ms, mean_ms: ms, runs: 50 }))
                .into_iter()
                .collect(),
            ..Row::new(tool, if tool == "original" { "" } else { "fp32" }, peer)
        }
    }

    #[test]
    fn ratios_compare_kiln_with_the_best_working_peer() {
        let rows = vec![
            row("original", false, "ok", None, Some(10.0)),
            row("kiln", false, "ok", Some(0.5), Some(8.0)),
            row("ort-transformers", true, "ok", Some(2.0), Some(9.0)),
            row("onnxsim", true, "ok", Some(1.0), Some(10.0)),
            // Faster, but broken: not a valid comparison.
            row("onnxslim", true, "mismatch: max |diff| 1e0 > 1e-3", Some(1.0), Some(1.0)),
        ];
        let r = ratios(&rows);
        assert_eq!(r.len(), 1);
        let best = &r[0].latency_vs_best_peer["1"];
        assert_eq!(best.peer, "ort-transformers");
        assert!((best.ratio - 8.0 / 9.0).abs() < 1e-12);
        assert_eq!(r[0].optimize_time_vs["onnxsim"], 0.5);
        assert_eq!(r[0].optimize_time_vs["ort-transformers"], 0.25);

        // A failed Kiln row has no latency ratio, and a failed peer no optimize-time ratio.
        let failed = vec![row("kiln", false, "failed: x", None, None), row("onnxsim", true, "failed: y", None, None)];
        let r = ratios(&failed);
        assert!(r[0].latency_vs_best_peer.is_empty() && r[0].optimize_time_vs.is_empty());
    }

    fn accuracy(cosine_min: f64, top1: Option<f64>) -> Accuracy {
        Accuracy {
            samples: 16,
            cosine_mean: Some(cosine_min),
            cosine_min: Some(cosine_min),
            top1,
            max_abs: None,
            mean_abs: None,
        }
    }

    fn in_group(mut r: Row, group: &str, rss: f64, cos: f64) -> Row {
        r.group = group.into();
        r.optimize_peak_rss_mib = Some(rss);
        r.accuracy.insert("a".into(), accuracy(1.0, None));
        r.accuracy.insert("b".into(), accuracy(cos, Some(0.5)));
        r
    }

    #[test]
    fn every_kiln_row_is_compared_with_each_peer_of_its_group_only() {
        let rows = vec![
            row("original", false, "ok", None, Some(10.0)),
            row("kiln", false, "ok", Some(0.5), Some(8.0)),
            row("onnxsim", true, "ok", Some(1.0), Some(10.0)),
            in_group(row("kiln-int8", false, "ok", Some(4.0), Some(4.0)), "int8", 300.0, 0.99),
            in_group(row("kiln-int8-dynamic", false, "failed: x", None, None), "int8", 0.0, 0.0),
            in_group(row("ort-quantize-static", true, "ok", Some(2.0), Some(5.0)), "int8", 200.0, 0.98),
            in_group(row("ort-quantize-dynamic", true, "mismatch: y", Some(1.0), Some(2.0)), "int8", 100.0, 0.5),
        ];
        let r = ratios(&rows);
        let names: Vec<&str> = r.iter().map(|x| x.kiln.as_str()).collect();
        assert_eq!(names, ["kiln", "kiln-int8", "kiln-int8-dynamic"]);
        // The fp32 row is compared with fp32 peers only; int8 rows get no onnxsim time ratio.
        assert_eq!(r[0].vs_peers.iter().map(|p| p.peer.as_str()).collect::<Vec<_>>(), ["onnxsim"]);
        assert!(r[1].optimize_time_vs.is_empty());
        let int8 = &r[1];
        assert_eq!(int8.accuracy.as_ref().unwrap().output, "b");
        assert_eq!(int8.accuracy.as_ref().unwrap().cosine_min, 0.99);
        let [stat, dynamic] = &int8.vs_peers[..] else { panic!("{:?}", int8.vs_peers) };
        assert_eq!(
            (stat.peer.as_str(), stat.optimize_time, stat.peak_rss),
            ("ort-quantize-static", Some(2.0), Some(1.5))
        );
        assert_eq!(stat.latency["1"], 0.8);
        assert_eq!(stat.peer_accuracy.as_ref().unwrap().top1, Some(0.5));
        // A broken peer still gets its ratios, with its status beside them.
        assert_eq!((dynamic.peer_status.as_str(), dynamic.latency["1"]), ("mismatch: y", 2.0));
        // A failed Kiln row has no ratios at all.
        assert!(
            r[2].vs_peers.iter().all(|p| p.optimize_time.is_none() && p.peak_rss.is_none() && p.latency.is_empty())
        );

        let fixture = |ratios| FixtureReport { name: "f".into(), model: "m".into(), rows: vec![], ratios };
        let mut other = ratios(&rows);
        other[1].vs_peers[0].optimize_time = Some(8.0);
        let summary = summarize(&[fixture(r), fixture(other)]);
        let int8 = summary.iter().find(|s| s.kiln == "kiln-int8").unwrap();
        let stat = int8.vs_peers_geomean.iter().find(|g| g.peer == "ort-quantize-static").unwrap();
        assert_eq!(stat.fixtures, 2);
        assert!((stat.optimize_time.unwrap() - 4.0).abs() < 1e-12);
        // The mismatched peer and the failed Kiln row are left out of the means.
        let dynamic = int8.vs_peers_geomean.iter().find(|g| g.peer == "ort-quantize-dynamic").unwrap();
        assert_eq!((dynamic.fixtures, dynamic.optimize_time), (0, None));
        let failed = summary.iter().find(|s| s.kiln == "kiln-int8-dynamic").unwrap();
        assert!(failed.vs_peers_geomean.iter().all(|g| g.fixtures == 0));
    }

    #[test]
    fn summary_takes_geometric_means() {
        assert!((geomean(&[0.5, 2.0]).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(geomean(&[]), None);
        assert_eq!(geomean(&[1.0, 0.0]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn tables_align() {
        let t = vec![vec!["a".to_string(), "12".into(), "x".into()], vec!["bbb".into(), "3".into(), "yy".into()]];
        assert_eq!(format_table(&t, 1), "a    12  x\nbbb   3  yy\n");
        assert_eq!(markdown_table(&t, 1), "\n| a | 12 | x |\n| :-- | --: | --: |\n| bbb | 3 | yy |\n");
    }
}
