"""A check, step by step: the pipeline and its samples, the compression policy, the per-layer
view (graph, pairing, capture, divergence, isolation), the diagnosis and its experiments, the
budget, sweeps, and the steps behind convert, inspect and rerun.
"""
