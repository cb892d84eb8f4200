import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return helpers.MODELS


@pytest.fixture(scope="session")
def altered_cnn(tmp_path_factory):
    """models/cnn.onnx and an .mnn converted from a copy with one head weight changed."""
    d = tmp_path_factory.mktemp("altered_cnn")
    altered = helpers.alter_initializer(helpers.MODELS / "cnn.onnx", d / "altered.onnx",
                                        "conv3.weight", index=4, delta=3.0)
    mnn = helpers.to_mnn(altered, d / "cnn_altered.mnn")
    return helpers.MODELS / "cnn.onnx", mnn


@pytest.fixture(scope="session")
def add_pair(tmp_path_factory):
    """helpers.add_model: (add.onnx, add.mnn), made once; tests read it, never change it."""
    return helpers.add_model(tmp_path_factory.mktemp("add"))


@pytest.fixture(scope="session")
def llm_cache(tmp_path_factory, request):
    """Tiny LLMs and their MNN-LLM exports, made once per session (tests/llm_models.py)."""
    import llm_models

    base = tmp_path_factory.getbasetemp()
    # under xdist each worker's basetemp is in the session's one: share the exports there
    shared = hasattr(request.config, "workerinput")
    return llm_models.Cache((base.parent if shared else base) / "llm-cache")
