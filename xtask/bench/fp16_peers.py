"""FP16 peers for `cargo xtask bench`: two float32 -> float16 converters, at their defaults
except that the model keeps float32 inputs and outputs (as Kiln's `--precision fp16` does).

    python fp16_peers.py onnxconverter-common IN.onnx OUT.onnx
    python fp16_peers.py ort IN.onnx OUT.onnx

`onnxconverter-common`: `onnxconverter_common.float16.convert_float_to_float16`.
`ort`: `onnxruntime.transformers.onnx_model.OnnxModel.convert_float_to_float16`, which runs
ONNX Runtime's symbolic shape inference first.

Neither checks that ONNX Runtime can load what it wrote; the bench does that.
"""

import sys

import onnx


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    tool, model_in, model_out = argv
    model = onnx.load(model_in)
    if tool == "onnxconverter-common":
        from onnxconverter_common import float16

        onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), model_out)
    elif tool == "ort":
        from onnxruntime.transformers.onnx_model import OnnxModel

        wrapped = OnnxModel(model)
        wrapped.convert_float_to_float16(keep_io_types=True)
        wrapped.save_model_to_file(model_out)
    else:
        print(f"unknown tool {tool!r}\n{__doc__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
