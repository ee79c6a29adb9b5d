//! Tolerance specs: which metric of which output must satisfy what.
//!
//! A spec is a comma-separated list of rules `OUTPUT:METRIC OP VALUE`, e.g.
//! `sentence_embedding:cosine>=0.995,logits:top1>=0.99,*:max_abs<=1e-3`. `OUTPUT` is an output
//! name (it may itself contain `:`, as in `onnx::Shape_422`: the last `:` separates the metric)
//! or `*`; `OP` is one of `>=`, `<=`, `>`, `<`, `==`.
//!
//! Which rules apply to an output: its own rules when the spec names it, otherwise the `*`
//! rules (so `logits:top1>=0.99,*:max_abs<=1e-3` does not hold the logits to 1e-3). The
//! [`IMPLICIT`] rules (no shape changes, no new NaN/∞) apply to every output unless the
//! output's rules already name that metric.

use std::fmt;
use std::str::FromStr;

use super::{Metric, OutputMetrics};

/// Rules every output is held to unless its rules name the metric: same shapes, and no
/// element finite on one side but not the other.
pub const IMPLICIT: &str = "*:shape_mismatch<=0,*:nonfinite_mismatch<=0";
/// Default for FP32 rewrites (fusions, folding): summation-order noise only.
pub const FP32_REWRITE: &str = "*:cosine_min>=0.99999,*:sqnr_db>=60,*:max_rel<=1e-2";
/// Default for FP16 precision.
pub const FP16: &str = "*:cosine_min>=0.999,*:sqnr_db>=30";
/// Default for BF16 precision: 8 significant bits instead of FP16's 11.
pub const BF16: &str = "*:cosine_min>=0.995,*:sqnr_db>=20";
/// Default for INT4 weight-only quantization.
///
/// Top-k agreement is not in the defaults: `*` also matches embeddings,
/// whose argmax over features means nothing. Name a classifier's output to hold it to top-1
/// (`logits:top1>=0.99`).
pub const INT4: &str = "*:cosine_mean>=0.98,*:cosine_min>=0.95";
/// Default for INT8 quantization.
pub const INT8: &str = "*:cosine_mean>=0.99,*:cosine_min>=0.98";

/// The precision a candidate was produced at, which picks the default tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
    Int8,
    Int4,
}

impl Precision {
    pub fn default_spec(self) -> ToleranceSpec {
        let text = match self {
            Precision::Fp32 => FP32_REWRITE,
            Precision::Fp16 => FP16,
            Precision::Bf16 => BF16,
            Precision::Int8 => INT8,
            Precision::Int4 => INT4,
        };
        // The constants are tested to parse.
        ToleranceSpec::parse(text).unwrap_or_default()
    }
}

/// A comparison of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Ge,
    Le,
    Gt,
    Lt,
    Eq,
}

impl Comparison {
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::Ge => ">=",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Lt => "<",
            Comparison::Eq => "==",
        }
    }

    /// Whether `value OP threshold` holds; never for a NaN value.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Ge => value >= threshold,
            Comparison::Le => value <= threshold,
            Comparison::Gt => value > threshold,
            Comparison::Lt => value < threshold,
            Comparison::Eq => value == threshold,
        }
    }
}

/// One rule: `output` `None` is `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub output: Option<String>,
    pub metric: Metric,
    pub comparison: Comparison,
    pub threshold: f64,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}{}{}",
            self.output.as_deref().unwrap_or("*"),
            self.metric,
            self.comparison.symbol(),
            self.threshold
        )
    }
}

/// A spec that could not be parsed; names the rule and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("empty tolerance spec (expected rules like `*:max_abs<=1e-3`)")]
    Empty,
    #[error("tolerance rule {index} `{rule}`: {reason}")]
    Rule { index: usize, rule: String, reason: String },
}

/// A parsed tolerance spec.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToleranceSpec {
    rules: Vec<Rule>,
}

/// How a rule fared on an output.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub rule: Rule,
    /// The metric's value; `None` when the metric does not apply to this output.
    pub value: Option<f64>,
    pub pass: bool,
}

const COMPARISONS: [(&str, Comparison); 5] = [
    (">=", Comparison::Ge),
    ("<=", Comparison::Le),
    ("==", Comparison::Eq),
    (">", Comparison::Gt),
    ("<", Comparison::Lt),
];

fn parse_rule(index: usize, text: &str) -> Result<Rule, SpecError> {
    let err = |reason: String| SpecError::Rule { index, rule: text.to_string(), reason };
    // Metric names and numbers hold no `:`, so the last one ends the output name.
    let Some((output, rest)) = text.rsplit_once(':') else {
        return Err(err("expected `OUTPUT:METRIC OP VALUE` (use `*` as OUTPUT for every output)".into()));
    };
    let Some(at) = rest.find(['<', '>', '=', '!']) else {
        return Err(err("expected a comparison (>=, <=, >, <, ==) after the metric name".into()));
    };
    let (metric, tail) = rest.split_at(at);
    let Some((symbol, comparison)) = COMPARISONS.iter().find(|(s, _)| tail.starts_with(s)) else {
        return Err(err(format!(
            "unknown comparison at `{}` (expected one of >=, <=, >, <, ==)",
            tail.chars().take(2).collect::<String>()
        )));
    };
    let output = output.trim();
    if output.is_empty() {
        return Err(err("empty output name (use `*` for every output)".into()));
    }
    let metric_name = metric.trim();
    let metric = Metric::from_name(metric_name).ok_or_else(|| {
        let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        err(format!("unknown metric `{metric_name}`; known: {} (and cosine, sqnr)", known.join(", ")))
    })?;
    let value = tail[symbol.len()..].trim();
    let threshold: f64 = value.parse().map_err(|_| err(format!("`{value}` is not a number")))?;
    if threshold.is_nan() {
        return Err(err("the threshold is NaN".into()));
    }
    Ok(Rule { output: (output != "*").then(|| output.to_string()), metric, comparison: *comparison, threshold })
}

impl ToleranceSpec {
    /// Parses `OUTPUT:METRIC OP VALUE[,…]`; spaces around parts are allowed.
    pub fn parse(text: &str) -> Result<ToleranceSpec, SpecError> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if parts.iter().all(|p| p.is_empty()) {
            return Err(SpecError::Empty);
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let index = i + 1;
            if part.is_empty() {
                return Err(SpecError::Rule { index, rule: String::new(), reason: "empty rule (stray comma?)".into() });
            }
            let rule = parse_rule(index, part)?;
            if rules.iter().any(|r| r.output == rule.output && r.metric == rule.metric) {
                return Err(SpecError::Rule {
                    index,
                    rule: part.to_string(),
                    reason: format!(
                        "a second rule for {} of {}",
                        rule.metric,
                        rule.output.as_deref().map_or("`*`".to_string(), |o| format!("`{o}`"))
                    ),
                });
            }
            rules.push(rule);
        }
        Ok(ToleranceSpec { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The output names the spec mentions (each must exist in the model).
    pub fn named_outputs(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.rules {
            if let Some(o) = r.output.as_deref()
                && !names.contains(&o)
            {
                names.push(o);
            }
        }
        names
    }

    /// The rules that apply to `output`: its own if the spec names it, else the `*` rules;
    /// then the [`IMPLICIT`] rules for metrics those do not mention.
    pub fn rules_for(&self, output: &str) -> Vec<Rule> {
        let named = self.rules.iter().any(|r| r.output.as_deref() == Some(output));
        let mut rules: Vec<Rule> = self
            .rules
            .iter()
            .filter(|r| if named { r.output.as_deref() == Some(output) } else { r.output.is_none() })
            .cloned()
            .collect();
        let implicit = ToleranceSpec::parse(IMPLICIT).unwrap_or_default();
        for r in implicit.rules {
            if !rules.iter().any(|o| o.metric == r.metric) {
                rules.push(r);
            }
        }
        rules
    }

    /// Every applicable rule of `output` against its metrics. A metric that does not apply
    /// (`value: None`) fails a rule naming the output and passes a `*` rule (which is meant for
    /// the outputs it fits).
    pub fn evaluate(&self, output: &str, metrics: &OutputMetrics) -> Vec<Verdict> {
        self.rules_for(output)
            .into_iter()
            .map(|rule| {
                let value = metrics.get(rule.metric);
                let pass = match value {
                    Some(v) => rule.comparison.holds(v, rule.threshold),
                    None => rule.output.is_none(),
                };
                Verdict { rule, value, pass }
            })
            .collect()
    }
}

impl FromStr for ToleranceSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<ToleranceSpec, SpecError> {
        ToleranceSpec::parse(s)
    }
}

impl fmt::Display for ToleranceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}
