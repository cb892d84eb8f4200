"""The diagnosis's experiments, one module each; diagnose.EXPERIMENTS declares the order they
run in (the first decisive one gives the verdict). measure.py holds what they share: how an
experiment's figure is measured and when it is decisive. This package's __init__ imports none
of its modules."""
