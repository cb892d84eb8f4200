"""MNN's files and tools: the flatbuffer and its graph, op references, the converter, quantization,
compression and its ranking.
"""
