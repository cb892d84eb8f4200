"""What the two benchmark tiers share (scripts/bench.py, scripts/bench_realistic.py): kept here so
that neither imports the other's module for it (bench.py runs bench_realistic for --tier
realistic; bench_realistic needed bench's hand-written baseline script).
"""

# The minimal script parity is measured against: the same work (ORT run, MNN Module run,
# allclose), with integer inputs (token ids) generated as integers, as parity does.
HAND_WRITTEN = """
import sys, numpy as np, onnxruntime as ort, MNN
onnx_path, mnn_path = sys.argv[1:3]
session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feeds = {}
for i in session.get_inputs():
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    feeds[i.name] = (rng.integers(0, 64, shape).astype(np.int64) if "int" in i.type
                     else rng.standard_normal(shape).astype(np.float32))
reference = session.run(None, feeds)
module = MNN.nn.load_module_from_file(mnn_path, [i.name for i in session.get_inputs()],
                                      [o.name for o in session.get_outputs()])
variables = []
for i in session.get_inputs():
    array = feeds[i.name]
    if array.dtype == np.int64:
        v = MNN.expr.placeholder(list(array.shape), MNN.expr.NCHW, MNN.expr.int)
        v.write(array.astype(np.int32))
    else:
        v = MNN.expr.placeholder(list(array.shape), MNN.expr.NCHW, MNN.expr.float)
        v.write(array)
    variables.append(v)
for r, out in zip(reference, module.onForward(variables)):
    if out.data_format == MNN.expr.NC4HW4:
        out = MNN.expr.convert(out, MNN.expr.NCHW)
    c = out.read()
    print(float(np.abs(r - c).max()), bool(np.allclose(c, r, atol=1e-3, rtol=1e-3)))
"""

