"""Dump one MNN tensor the way users do by hand (run as a script, MNN stays out of pytest).

    python tests/mnn_dump.py MODEL.mnn INPUTS.npz TENSOR MODE OUT

MODE: nchw (converted, as parity reads it), nc4hw4 (the raw buffer of an NC4HW4 tensor read
without conversion), nhwc (converted to NHWC first), flat (nchw, flattened).
OUT ending in .npy is saved with numpy; anything else is written as raw bytes.
"""

import sys

import MNN
import numpy as np

model, inputs, tensor, mode, out = sys.argv[1:6]
F = MNN.expr
feeds = np.load(inputs)
names = list(feeds.files)
module = MNN.nn.load_module_from_file(model, names, [tensor])
variables = []
for name in names:
    v = F.placeholder(list(feeds[name].shape), F.NCHW, F.float)
    v.write(feeds[name])
    variables.append(v)
(var,) = module.onForward(variables)
if mode == "nc4hw4":
    assert var.data_format == F.NC4HW4, var.data_format
    array = np.array(var.read())  # NC4HW4 memory read as if it were NCHW: what users get
elif mode == "nhwc":
    array = np.array(F.convert(var, F.NHWC).read())
else:
    if var.data_format == F.NC4HW4:
        var = F.convert(var, F.NCHW)
    array = np.array(var.read())
    if mode == "flat":
        array = array.reshape(-1)
if out.endswith(".npy"):
    np.save(out, array)
else:
    array.astype(np.float32).tofile(out)
