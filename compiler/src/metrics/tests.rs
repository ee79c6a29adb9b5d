//! Metric values checked against hand-computed ones.

use super::*;

fn close(a: Option<f64>, b: f64) {
    let a = a.unwrap_or_else(|| panic!("metric missing, expected {b}"));
    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} != {b}");
}

#[test]
fn two_samples_by_hand() {
    let mut acc = Accumulator::new(MetricsConfig::default());
    acc.add_values(&[1, 4], &[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 3.0, 5.0], true).unwrap();
    acc.add_values(&[1, 4], &[0.5, 0.1, 0.2, 0.2], &[0.1, 0.5, 0.2, 0.2], true).unwrap();
    let m = acc.finish();
    assert_eq!((m.samples, m.compared), (2, 8));
    close(m.get(Metric::MaxAbs), 1.0);
    // (1 + 0.4 + 0.4) / 8
    close(m.get(Metric::MeanAbs), 0.225);
    // Second sample: floor 1e-3 × 0.5 is below |0.1|, so 0.4 / 0.1.
    close(m.get(Metric::MaxRel), 4.0);
    let cos1 = 34.0 / (30f64.sqrt() * 39f64.sqrt());
    let cos2 = 0.18 / 0.34;
    close(m.get(Metric::CosineMean), (cos1 + cos2) / 2.0);
    close(m.get(Metric::CosineMin), cos2);
    // Signal 30 + 0.34, noise 1 + 0.16 + 0.16.
    close(m.get(Metric::SqnrDb), 10.0 * (30.34f64 / 1.32).log10());
    // Row 1: argmax 3 on both sides; row 2: reference 0, candidate 1.
    close(m.get(Metric::Top1), 0.5);
    close(m.get(Metric::Argmax), 0.5);
    // The last axis has 4 entries: top-5 says nothing.
    assert_eq!(m.get(Metric::Top5), None);
    close(m.get(Metric::Nan), 0.0);
    close(m.get(Metric::ShapeMismatch), 0.0);
    close(Some(m.reference_max_abs), 4.0);
}

#[test]
fn relative_error_has_a_floor() {
    let mut acc = Accumulator::new(MetricsConfig::default());
    acc.add_values(&[2], &[1000.0, 0.0], &[1000.0, 0.5], false).unwrap();
    // 0.5 / max(|0|, 1e-3 × 1000)
    close(acc.finish().get(Metric::MaxRel), 0.5);
    let mut acc = Accumulator::new(MetricsConfig { relative_floor: 0.0, ..MetricsConfig::default() });
    acc.add_values(&[2], &[1000.0, 0.0], &[1000.0, 0.5], false).unwrap();
    close(acc.finish().get(Metric::MaxRel), 0.5 / RELATIVE_FLOOR_MIN);
}

#[test]
fn non_finite_values_are_counted_not_compared() {
    let mut acc = Accumulator::new(MetricsConfig::default());
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    acc.add_values(&[4], &[1.0, nan, inf, 2.0], &[1.0, nan, 1.0, inf], false).unwrap();
    let m = acc.finish();
    assert_eq!(m.compared, 1);
    close(m.get(Metric::Nan), 1.0);
    close(m.get(Metric::Inf), 1.0);
    close(m.get(Metric::RefNan), 1.0);
    close(m.get(Metric::RefInf), 1.0);
    // NaN against NaN is the same; ∞ against 1 and 2 against ∞ are not.
    close(m.get(Metric::NonfiniteMismatch), 2.0);
    close(m.get(Metric::MaxAbs), 0.0);
}

#[test]
fn top5_counts_the_reference_class_among_the_candidate_best() {
    let mut acc = Accumulator::new(MetricsConfig::default());
    let reference = [9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    // Class 0 ranks fifth (4 larger): a top-5 hit, a top-1 miss.
    let fifth = [5.0, 9.0, 8.0, 7.0, 6.0, 1.0, 1.0, 1.0];
    // Class 0 ties with index 5..: ranks after 5 larger values: a miss.
    let sixth = [5.0, 9.0, 8.0, 7.0, 6.0, 5.5, 1.0, 1.0];
    let r: Vec<f64> = reference.iter().chain(&reference).copied().collect();
    let c: Vec<f64> = fifth.iter().chain(&sixth).copied().collect();
    acc.add_values(&[2, 8], &r, &c, true).unwrap();
    let m = acc.finish();
    close(m.get(Metric::Top1), 0.0);
    close(m.get(Metric::Top5), 0.5);
    // Ties rank by index: an equal value at a lower index comes first.
    assert_eq!(rank_of(&[3.0, 3.0, 1.0], 1), Some(1));
    assert_eq!(rank_of(&[3.0, 3.0, 1.0], 0), Some(0));
    assert_eq!(rank_of(&[3.0, f64::NAN], 1), None);
}

#[test]
fn argmax_along_another_axis() {
    let mut acc = Accumulator::new(MetricsConfig { argmax_axis: 0, ..MetricsConfig::default() });
    // [[1, 5], [3, 2], [2, 1]] against [[1, 5], [3, 2], [4, 1]]: column 0 moves (1 → 2),
    // column 1 stays (0).
    acc.add_values(&[3, 2], &[1.0, 5.0, 3.0, 2.0, 2.0, 1.0], &[1.0, 5.0, 3.0, 2.0, 4.0, 1.0], true).unwrap();
    let m = acc.finish();
    close(m.get(Metric::Argmax), 0.5);
    // Along the last axis every row keeps its class.
    close(m.get(Metric::Top1), 1.0);
}

#[test]
fn identical_outputs_are_perfect_and_shape_changes_are_counted() {
    let t = Tensor::from_slice(vec![2, 3], &[0.1f32, 0.2, 0.7, 0.3, 0.3, 0.4]).unwrap();
    let mut acc = Accumulator::new(MetricsConfig::default());
    acc.add(&t, &t).unwrap();
    let m = acc.finish();
    assert_eq!(m.get(Metric::SqnrDb), Some(f64::INFINITY));
    assert_eq!(m.get(Metric::CosineMin), Some(1.0));
    assert_eq!(m.get(Metric::MaxAbs), Some(0.0));
    assert_eq!(m.get(Metric::Top1), Some(1.0));

    let other = Tensor::from_slice(vec![3, 2], &[0.1f32, 0.2, 0.7, 0.3, 0.3, 0.4]).unwrap();
    let mut acc = Accumulator::new(MetricsConfig::default());
    acc.add(&t, &other).unwrap();
    let m = acc.finish();
    assert_eq!(m.get(Metric::ShapeMismatch), Some(1.0));
    assert_eq!(m.get(Metric::MaxAbs), None);

    // Integers compare as numbers, without top-k.
    let ids = Tensor::from_slice(vec![1, 3], &[101i64, 7, 102]).unwrap();
    let mut acc = Accumulator::new(MetricsConfig::default());
    acc.add(&ids, &ids).unwrap();
    assert_eq!(acc.finish().get(Metric::Top1), None);

    let s = Tensor::from_strings(vec![1], vec![bytes::Bytes::from_static(b"a")]).unwrap();
    let err = Accumulator::new(MetricsConfig::default()).add(&s, &s).unwrap_err();
    assert!(err.to_string().contains("no numeric comparison"), "{err}");
}

#[test]
fn zero_vectors_and_deterministic_results() {
    let mut acc = Accumulator::new(MetricsConfig::default());
    acc.add_values(&[2], &[0.0, 0.0], &[0.0, 0.0], false).unwrap();
    assert_eq!(acc.finish().get(Metric::CosineMin), Some(1.0));
    acc.add_values(&[2], &[0.0, 0.0], &[0.0, 1.0], false).unwrap();
    let m = acc.finish();
    assert_eq!(m.get(Metric::CosineMin), Some(0.0));
    assert_eq!(m.get(Metric::SqnrDb), Some(f64::NEG_INFINITY));
    let err = acc.add_values(&[3], &[0.0; 3], &[0.0; 2], false).unwrap_err();
    assert!(matches!(err, MetricsError::WrongLength { side: "candidate", .. }), "{err}");
}

#[test]
fn spec_parses_and_picks_rules_per_output() {
    let spec = ToleranceSpec::parse("sentence_embedding:cosine>=0.995, logits:top1>=0.99,*:max_abs<=1e-3").unwrap();
    assert_eq!(spec.rules().len(), 3);
    assert_eq!(spec.rules()[0].metric, Metric::CosineMin);
    assert_eq!(spec.named_outputs(), vec!["sentence_embedding", "logits"]);
    assert_eq!(spec.to_string(), "sentence_embedding:cosine_min>=0.995,logits:top1>=0.99,*:max_abs<=0.001");
    assert_eq!(ToleranceSpec::parse(&spec.to_string()).unwrap(), spec);

    // A named output gets its own rules (plus the implicit ones), the rest get `*`.
    let logits: Vec<String> = spec.rules_for("logits").iter().map(ToString::to_string).collect();
    assert_eq!(logits, ["logits:top1>=0.99", "*:shape_mismatch<=0", "*:nonfinite_mismatch<=0"]);
    let other: Vec<String> = spec.rules_for("probs").iter().map(ToString::to_string).collect();
    assert_eq!(other, ["*:max_abs<=0.001", "*:shape_mismatch<=0", "*:nonfinite_mismatch<=0"]);

    // Output names may hold `:`.
    let spec = ToleranceSpec::parse("onnx::Shape_422:sqnr > 40").unwrap();
    assert_eq!(spec.rules()[0].output.as_deref(), Some("onnx::Shape_422"));
    assert_eq!(spec.rules()[0].comparison, Comparison::Gt);

    for p in [Precision::Fp32, Precision::Fp16, Precision::Int8] {
        assert!(!p.default_spec().rules().is_empty(), "{p:?}");
    }
    for text in [FP32_REWRITE, FP16, BF16, INT8, INT4, IMPLICIT] {
        ToleranceSpec::parse(text).unwrap();
    }
}

#[test]
fn spec_errors_name_the_rule() {
    let cases = [
        ("", "empty tolerance spec"),
        ("*:max_abs<=1e-3,", "rule 2 ``: empty rule"),
        ("max_abs<=1e-3", "rule 1 `max_abs<=1e-3`: expected `OUTPUT:METRIC OP VALUE`"),
        ("*:max_abs", "expected a comparison"),
        ("*:top1=>0.99", "unknown comparison at `=>`"),
        ("*:top1!=0.99", "unknown comparison at `!=`"),
        ("*:top3>=0.99", "unknown metric `top3`; known: max_abs"),
        ("*:top1>=high", "`high` is not a number"),
        ("*:top1>=NaN", "NaN"),
        (":top1>=0.9", "empty output name"),
        ("y:top1>=0.9,y:top1>=0.8", "rule 2 `y:top1>=0.8`: a second rule for top1 of `y`"),
    ];
    for (text, needle) in cases {
        let err = ToleranceSpec::parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn verdicts_pass_fail_and_not_applicable() {
    let mut acc = Accumulator::new(MetricsConfig::default());
    acc.add_values(&[1, 4], &[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 3.0, 5.0], true).unwrap();
    let m = acc.finish();
    let spec = ToleranceSpec::parse("*:max_abs<=0.5,*:top5>=0.9,*:top1>=1").unwrap();
    let v = spec.evaluate("y", &m);
    let summary: Vec<(String, bool)> = v.iter().map(|v| (v.rule.metric.to_string(), v.pass)).collect();
    assert_eq!(
        summary,
        [
            ("max_abs".to_string(), false),
            ("top5".to_string(), true),
            ("top1".to_string(), true),
            ("shape_mismatch".to_string(), true),
            ("nonfinite_mismatch".to_string(), true)
        ]
    );
    assert_eq!(v[1].value, None);
    // Named, a rule whose metric does not apply fails.
    let spec = ToleranceSpec::parse("y:top5>=0.9").unwrap();
    assert!(!spec.evaluate("y", &m)[0].pass);
}

#[test]
fn regression_rule() {
    // max_abs: 10% + 1e-5 × scale.
    assert!((regression_limit(Metric::MaxAbs, 1e-4, 1.0).unwrap() - 1.2e-4).abs() < 1e-15);
    assert!(!is_regression(Metric::MaxAbs, 1e-4, 1.15e-4, 1.0));
    assert!(is_regression(Metric::MaxAbs, 1e-4, 1.25e-4, 1.0));
    assert!(is_regression(Metric::MaxAbs, 0.0, 2e-5, 1.0));
    assert!(!is_regression(Metric::MaxAbs, 0.0, 2e-5, 10.0));
    // cosine: 1 − c may grow by 10% + 1e-6.
    assert!(!is_regression(Metric::CosineMin, 0.999, 0.9989, 1.0));
    assert!(is_regression(Metric::CosineMin, 0.999, 0.9988, 1.0));
    assert!(is_regression(Metric::CosineMin, 1.0, 0.99999, 1.0));
    assert!(!is_regression(Metric::CosineMin, 1.0, 0.9999995, 1.0));
    // Agreement: no extra flipped row when the baseline was perfect.
    assert!(is_regression(Metric::Top1, 1.0, 0.999, 1.0));
    assert!(!is_regression(Metric::Top1, 0.9, 0.895, 1.0));
    // SQNR: capped at 100 dB, may drop 0.41 dB.
    assert!(!is_regression(Metric::SqnrDb, f64::INFINITY, 120.0, 1.0));
    assert!(is_regression(Metric::SqnrDb, f64::INFINITY, 80.0, 1.0));
    assert!(!is_regression(Metric::SqnrDb, 40.0, 39.7, 1.0));
    assert!(is_regression(Metric::SqnrDb, 40.0, 39.5, 1.0));
    // Counts may not grow; reference counts have no direction; NaN always regresses.
    assert!(is_regression(Metric::Nan, 0.0, 1.0, 1.0));
    assert!(!is_regression(Metric::RefNan, 0.0, 5.0, 1.0));
    assert!(is_regression(Metric::MaxAbs, 1.0, f64::NAN, 1.0));
    assert!(is_regression(Metric::CosineMean, 0.5, f64::NAN, 1.0));
}
