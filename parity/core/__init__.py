"""What every check stands on: metrics, alignment, the rules of a verdict, inputs, dumps, the
report and its errors. Depends on nothing else in parity.
"""
