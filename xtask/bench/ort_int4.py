"""The INT4 peer of `cargo xtask bench`: ONNX Runtime's own weight-only quantizer
(`onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`, its default
round-to-nearest algorithm) writing com.microsoft.MatMulNBits, with the block size and symmetry
given, saved as one self-contained model.onnx like Kiln's artifact.

usage: ort_int4.py IN.onnx OUT.onnx --block N [--asymmetric]
"""

import argparse
import logging

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--block", type=int, required=True)
    p.add_argument("--asymmetric", action="store_true")
    a = p.parse_args()
    # The quantizer logs every node it skips at INFO.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(onnx.load(a.input), block_size=a.block, is_symmetric=not a.asymmetric)
    q.process()
    onnx.save(q.model.model, a.output)


if __name__ == "__main__":
    main()
