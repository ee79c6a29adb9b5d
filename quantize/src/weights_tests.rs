//! Weight, activation and bias quantization against per-element reference definitions.

use super::*;

#[test]
fn asymmetric_range_from_zero_makes_qmin_the_zero_point() {
    let p = activation_params(0.0, 2.55, IntType::S8, false);
    assert_eq!(p.zero_point, vec![-128]);
    assert!((p.scale[0] - 0.01).abs() < 1e-7);
    assert_eq!(p.quantize(-1.0, 0), -128, "negatives saturate to 0: the quantizer is the ReLU");
    assert_eq!(p.dequantize(p.quantize(1.0, 0), 0), 1.0);
    // Ranges that exclude 0 are widened to hold it.
    let q = activation_params(1.0, 2.0, IntType::U8, false);
    assert_eq!(q.zero_point, vec![0]);
}

#[test]
fn symmetric_activations_center_zero() {
    let p = activation_params(-1.0, 3.0, IntType::S8, true);
    assert_eq!(p.zero_point, vec![0]);
    assert!((p.scale[0] - 3.0 / 127.0).abs() < 1e-7);
    assert_eq!(activation_params(-1.0, 3.0, IntType::U8, true).zero_point, vec![128]);
    // A tensor that is always 0 still gets an invertible scale.
    assert!(activation_params(0.0, 0.0, IntType::S8, true).scale[0] > 0.0);
}

#[test]
fn weights_per_channel_use_each_channels_absmax() {
    // [2 out channels, 3]: channel 0 up to 1.27, channel 1 up to 0.127.
    let w = Tensor::from_slice(vec![2, 3], &[1.27f32, -0.5, 0.0, 0.127, 0.05, -0.1]).unwrap();
    let (q, p) = quantize_weight(&w, Some(0)).unwrap();
    assert_eq!(q.dtype(), DataType::I8);
    assert_eq!(p.scale.len(), 2);
    assert_eq!(q.to_vec::<i8>().unwrap(), vec![127, -50, 0, 127, 50, -100]);
    let (_, pt) = quantize_weight(&w, None).unwrap();
    assert_eq!(pt.scale.len(), 1);
    assert!(quantize_weight(&w, Some(2)).is_err());
    let ints = Tensor::from_slice(vec![1], &[1i64]).unwrap();
    assert!(matches!(quantize_weight(&ints, None), Err(WeightError::NotFloat(_))));
}

#[test]
fn fast_weight_path_matches_the_reference_rounding() {
    // Ties (x.5 steps), saturation, non-finite values, per tensor and per channel on axes
    // 0, 1 and 2: the same integers as `quantize_values` clamped to ±127.
    let mut vals: Vec<f32> = (0..240).map(|i| ((i * 37) % 255) as f32 / 2.0 - 63.5).collect();
    vals[7] = f32::NAN;
    vals[11] = f32::INFINITY;
    vals[13] = -1.0e30;
    let w = Tensor::from_slice(vec![4, 6, 10], &vals).unwrap();
    for axis in [None, Some(0), Some(1), Some(2)] {
        let (q, p) = quantize_weight(&w, axis).unwrap();
        let want: Vec<i8> =
            quantize_values(&vals, &[4, 6, 10], &p).into_iter().map(|v| v.clamp(-127, 127) as i8).collect();
        assert_eq!(q.to_vec::<i8>().unwrap(), want, "axis {axis:?}");
        assert_eq!(
            p.scale,
            absmax_reference(&vals, &[4, 6, 10], axis).iter().map(|m| (m / 127.0).max(1e-8)).collect::<Vec<_>>()
        );
    }
    // Exact ties round to even: 0.5 → 0, 1.5 → 2, -2.5 → -2 (scale 1 from absmax 127).
    let t = Tensor::from_slice(vec![4], &[0.5f32, 1.5, -2.5, 127.0]).unwrap();
    assert_eq!(quantize_weight(&t, None).unwrap().0.to_vec::<i8>().unwrap(), vec![0, 2, -2, 127]);
}

/// Per-element definition of `quantize_weight`: the channel of element `i` is
/// `(i / inner) % n`, its integer `quantize` clamped to ±127.
fn quantize_reference(values: &[f32], dims: &[usize], axis: Option<usize>) -> (Vec<i8>, Vec<f32>) {
    let scale: Vec<f32> = absmax_reference(values, dims, axis).iter().map(|m| (m / 127.0).max(1e-8)).collect();
    let p = QParams { ty: IntType::S8, zero_point: vec![0; scale.len()], scale: scale.clone(), axis };
    let q = quantize_values(values, dims, &p).into_iter().map(|v| v.clamp(-127, 127) as i8).collect();
    (q, scale)
}

/// Deterministic values with a spread of magnitudes, a few non-finite ones.
fn odd_values(len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..len).map(|i| (((i * 7919) % 1001) as f32 - 500.0) * 0.01 * (1 + i % 13) as f32).collect();
    for (k, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -3.0e38].into_iter().enumerate() {
        if let Some(x) = v.get_mut(k * 131 + 5) {
            *x = bad;
        }
    }
    v
}

#[test]
fn streaming_walks_match_the_per_element_definition_on_odd_shapes() {
    // Row walks (inner >= 64), block walks (inner < 64, e.g. a MatMul [K, N] per column),
    // one-pass rows (channels on the outermost axis), per tensor, and tensors longer than one
    // decoded piece whose rows and blocks straddle piece boundaries (a per-tensor weight longer
    // than a one-pass row too: [300, 250]).
    let shapes: &[&[usize]] = &[
        &[7],
        &[3, 5],
        &[5, 3, 2],
        &[1, 1],
        &[129, 67],
        &[3, 70, 2],
        &[2, 3, 65],
        &[97, 173],
        &[8200, 3],
        &[3, 11, 997],
        &[300, 250],
    ];
    for dims in shapes {
        let len: usize = dims.iter().product();
        let vals = odd_values(len);
        let w = Tensor::from_slice(dims.to_vec(), &vals).unwrap();
        for axis in std::iter::once(None).chain((0..dims.len()).map(Some)) {
            let (q, p) = quantize_weight(&w, axis).unwrap();
            let (want_q, want_s) = quantize_reference(&vals, dims, axis);
            assert_eq!(p.scale, want_s, "{dims:?} axis {axis:?}");
            assert_eq!(q.to_vec::<i8>().unwrap(), want_q, "{dims:?} axis {axis:?}");
            assert_eq!(absmax(&vals, dims, axis), absmax_reference(&vals, dims, axis), "{dims:?} axis {axis:?}");
        }
    }
}

#[test]
fn half_weights_and_degenerate_shapes_quantize_like_f32() {
    let vals = odd_values(6 * 70);
    let finite: Vec<f32> = vals.iter().map(|&v| if v.is_finite() && v.abs() < 6e4 { v } else { 1.0 }).collect();
    let halves: Vec<half::f16> = finite.iter().map(|&v| half::f16::from_f32(v)).collect();
    let h = Tensor::from_slice(vec![6, 70], &halves).unwrap();
    let widened: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
    for axis in [None, Some(0), Some(1)] {
        let (q, p) = quantize_weight(&h, axis).unwrap();
        let (want_q, want_s) = quantize_reference(&widened, &[6, 70], axis);
        assert_eq!((q.to_vec::<i8>().unwrap(), p.scale), (want_q, want_s), "axis {axis:?}");
    }
    // Empty weights: no integers, and one valid scale per (possibly empty) channel set.
    let e = Tensor::from_slice::<f32>(vec![0, 4], &[]).unwrap();
    let (q, p) = quantize_weight(&e, Some(1)).unwrap();
    assert_eq!((q.len(), p.scale.len()), (0, 4));
    let (_, p) = quantize_weight(&e, Some(0)).unwrap();
    assert_eq!(p.scale, vec![1e-8]);
    // All non-finite: the scale is the floor, every integer 0.
    let bad = Tensor::from_slice(vec![2, 2], &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]).unwrap();
    let (q, p) = quantize_weight(&bad, Some(1)).unwrap();
    assert_eq!((q.to_vec::<i8>().unwrap(), p.scale), (vec![0; 4], vec![1e-8; 2]));
}

/// Per-element channel lookup, the definition `absmax` computes row by row.
fn absmax_reference(values: &[f32], dims: &[usize], axis: Option<usize>) -> Vec<f32> {
    let (n, inner) = axis.map_or((1, 1), |a| (dims[a], dims[a + 1..].iter().product()));
    let mut out = vec![0.0f32; n];
    for (i, v) in values.iter().enumerate() {
        let c = if axis.is_some() { (i / inner) % n } else { 0 };
        if v.is_finite() {
            out[c] = out[c].max(v.abs());
        }
    }
    out
}

#[test]
fn bias_scale_is_input_times_weight_scale() {
    let w = Tensor::from_slice(vec![2, 1], &[1.27f32, 0.127]).unwrap();
    let (_, p) = quantize_weight(&w, Some(0)).unwrap();
    let b = Tensor::from_slice(vec![2], &[0.5f32, -0.5]).unwrap();
    let (q, scales) = quantize_bias(&b, 0.1, &p).unwrap();
    assert_eq!(q.dtype(), DataType::I32);
    assert!((scales[0] - 0.001).abs() < 1e-9 && (scales[1] - 0.0001).abs() < 1e-10);
    assert_eq!(q.to_vec::<i32>().unwrap(), vec![500, -5000]);
    let short = Tensor::from_slice(vec![1], &[0.5f32]).unwrap();
    assert!(matches!(quantize_bias(&short, 0.1, &p), Err(WeightError::BiasChannels { .. })));
}
