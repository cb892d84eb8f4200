"""The package's shape: the check's options travel as one object (import cycles:
test_import_cycles.py)."""

from __future__ import annotations

import inspect


def test_check_takes_an_options_object():
    from parity.options import CheckOptions
    from parity.checking.pipeline import check

    parameters = inspect.signature(check).parameters
    assert parameters["options"].annotation in ("CheckOptions | None", CheckOptions | None)
    assert [p for p in parameters.values() if p.kind == p.KEYWORD_ONLY] == [parameters["progress"]]
    options = CheckOptions.from_keywords(seed=3, layers=True, layer_rtol=0.05, mnn_options={"threads": 1})
    assert options.layers.enabled and options.layers.layer_rtol == 0.05
    assert options.mnn.threads == 1 and options.seed == 3


def test_fail_on_layers_implies_capturing_layers():
    from parity.options import CheckOptions, LayerOptions

    assert LayerOptions(fail_on_layers=True).enabled
    assert CheckOptions.from_keywords(fail_on_layers=True).layers.enabled
