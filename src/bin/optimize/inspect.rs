//! `optimize inspect`.

use std::path::PathBuf;

use kiln::compiler::dump::dump_model;
use kiln::compiler::inspect::{ModelSummary, summarize};
use kiln::compiler::onnx::load_model;
use kiln::compiler::verify::Severity;

use crate::{Failure, Ui};

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx model.
    model: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Also print the whole graph as text.
    #[arg(long)]
    dump: bool,
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn print_text(s: &ModelSummary, path: &std::path::Path) {
    println!("model      {}", path.display());
    println!("ir_version {}", s.ir_version.unwrap_or(0));
    if !s.producer.is_empty() {
        println!("producer   {}", s.producer);
    }
    let opsets: Vec<String> = s.opsets.iter().map(|(d, v)| format!("{d}={v}")).collect();
    println!("opsets     {}", opsets.join(", "));
    println!("inputs");
    for io in &s.inputs {
        println!("  {}: {}", io.name, io.r#type);
    }
    println!("outputs");
    for io in &s.outputs {
        println!("  {}: {}", io.name, io.r#type);
    }
    println!("nodes      {} ({} op types)", s.nodes, s.op_histogram.len());
    let mut ops: Vec<(&String, &usize)> = s.op_histogram.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in ops {
        println!("  {n:>6}  {op}");
    }
    println!("parameters {} ({})", s.parameters, human_bytes(s.parameter_bytes));
    for (dt, st) in &s.by_dtype {
        println!("  {dt:<10} {:>6} tensors {:>12} elements {:>10}", st.tensors, st.elements, human_bytes(st.bytes));
    }
    if !s.external_files.is_empty() {
        println!("external data");
        for f in &s.external_files {
            println!("  {}: {} tensors, {}", f.location, f.tensors, human_bytes(f.bytes));
        }
    }
    if !s.subgraphs.is_empty() {
        println!("subgraphs  {} (nested as a tree; --json gives full paths)", s.subgraphs.len());
        for sg in &s.subgraphs {
            let depth = sg.path.matches("/'").count();
            let leaf = sg.path.rsplit("/'").next().unwrap_or(&sg.path);
            let leaf = if depth > 0 { format!("'{leaf}") } else { leaf.to_string() };
            println!("  {}{leaf} ({} nodes)", "  ".repeat(depth), sg.nodes);
        }
    }
    if !s.functions.is_empty() {
        println!("functions  {}", s.functions.join(", "));
    }
}

pub fn run(args: Args, ui: &Ui) -> Result<(), Failure> {
    let model = load_model(&args.model)?;
    let summary = summarize(&model);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary).map_err(Failure::runtime)?);
    } else if !ui.quiet {
        print_text(&summary, &args.model);
        if args.dump {
            print!("{}", dump_model(&model));
        }
    }
    for p in summary.problems.iter().filter(|p| p.severity == Severity::Warning) {
        ui.warn(format!("{}: {p}", args.model.display()));
    }
    let errors: Vec<String> = summary
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| format!("{}: {}: {}: {}", args.model.display(), p.graph, p.location, p.message))
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(Failure::bad_input(errors.join("\nerror: "))) }
}
