"""INT8 peer for `cargo xtask bench`: ONNX Runtime's own quantization tool.

    python ort_quantize.py static IN.onnx OUT.onnx DATA_DIR [minmax|percentile|entropy]
    python ort_quantize.py static-no-preprocess IN.onnx OUT.onnx DATA_DIR [minmax|percentile|entropy]
    python ort_quantize.py dynamic IN.onnx OUT.onnx

`static` and `dynamic` run `quant_pre_process` first (symbolic shape inference, ORT's basic
graph optimization, ONNX shape inference), as ONNX Runtime's quantization documentation
recommends, into a temporary folder, so only the quantized model lands next to OUT.
`static-no-preprocess` quantizes the model as given: on opset-11 models the pre-processing's
Conv+Add fusion leaves a bias that `quantize_static` dequantizes per channel with an `axis`
attribute opset 11 does not have, and ONNX Runtime refuses to load the result.

`static`: `quantize_static` in QDQ format, per-channel S8 weights, U8 activations, MinMax
calibration over every `.npz` sample of DATA_DIR (keys = input names, the samples Kiln is
given): the scheme Kiln emits for ORT CPU on x86. The optional last argument picks ORT's
calibrator instead: `percentile` (its default, 99.999) or `entropy`; both keep every
activation of every sample in memory before building their histograms.

`dynamic`: `quantize_dynamic`, per-channel S8 weights, activations quantized at run time; the
tool's default operator set (it quantizes more than MatMul).
"""

import os
import sys
import tempfile

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process


class NpzReader(CalibrationDataReader):
    """Feeds the samples of a folder of `.npz` files in name order, one sample per call, each
    holding the model's graph inputs (initializers that are also inputs are left out)."""

    def __init__(self, model_path, data_dir):
        model = onnx.load(model_path, load_external_data=False)
        initializers = {t.name for t in model.graph.initializer}
        self.names = [i.name for i in model.graph.input if i.name not in initializers]
        self.files = sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir) if f.endswith(".npz"))
        if not self.files:
            raise SystemExit(f"no .npz samples in {data_dir}")
        self.next_index = 0

    def get_next(self):
        if self.next_index >= len(self.files):
            return None
        path = self.files[self.next_index]
        self.next_index += 1
        with np.load(path) as sample:
            missing = [n for n in self.names if n not in sample.files]
            if missing:
                raise SystemExit(f"{path}: no array for model input(s) {missing}")
            return {n: sample[n] for n in self.names}

    def rewind(self):
        self.next_index = 0


def preprocess(model_in, tmp):
    """`quant_pre_process` into `tmp`. Its symbolic shape inference gives up on some real
    models (a Concat it cannot follow, a dimension it cannot resolve); the second try skips it
    with the tool's own option for that (`skip_symbolic_shape`) and says so on stderr."""
    out = os.path.join(tmp, "preprocessed.onnx")
    try:
        quant_pre_process(model_in, out)
    except Exception as e:  # the tool raises bare Exception and AssertionError here
        print(f"ort_quantize: quant_pre_process failed ({type(e).__name__}: {e}); again with skip_symbolic_shape=True",
              file=sys.stderr)
        quant_pre_process(model_in, out, skip_symbolic_shape=True)
    return out


CALIBRATORS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def main(argv):
    if len(argv) in (4, 5) and argv[0] in ("static", "static-no-preprocess"):
        method = CALIBRATORS.get(argv[4] if len(argv) == 5 else "minmax")
        if method is None:
            print(f"unknown calibrator {argv[4]!r}; expected one of {', '.join(CALIBRATORS)}", file=sys.stderr)
            return 2
        model_in, model_out, data_dir = (os.path.abspath(a) for a in argv[1:4])
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)  # the tools leave temporary files in the working directory
            pre = preprocess(model_in, tmp) if argv[0] == "static" else model_in
            quantize_static(
                pre,
                model_out,
                NpzReader(pre, data_dir),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
            )
        return 0
    if len(argv) == 3 and argv[0] == "dynamic":
        model_in, model_out = (os.path.abspath(a) for a in argv[1:])
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            pre = preprocess(model_in, tmp)
            quantize_dynamic(pre, model_out, per_channel=True, weight_type=QuantType.QInt8)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
