import pytest

from tests.language_models import build_models


@pytest.fixture(scope="session", autouse=True)
def models_dir(tmp_path_factory):
    """Tiny SentencePiece and KenLM models in DATAMATE_MODELS_DIR, so operators that need them build."""
    directory = build_models(tmp_path_factory.mktemp("models"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATAMATE_MODELS_DIR", str(directory))
        yield directory
