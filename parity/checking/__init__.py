"""A check, step by step: the pipeline, the layers, the diagnosis and its experiments, the budget,
sweeps.
"""
