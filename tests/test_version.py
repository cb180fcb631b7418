"""featherlight.__version__ states the Lightning API it implements; featherlight's own release is separate."""
import pathlib
import re

import pytest
import torch

import featherlight

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_version_is_the_lightning_api_with_featherlight_as_local_part():
    packaging_version = pytest.importorskip("packaging.version")
    version = packaging_version.Version(featherlight.__version__)
    assert version.public == featherlight.__lightning_version__
    assert version.local == f"featherlight.{featherlight.__featherlight_version__}"
    # the checks libraries make to pick their code paths
    assert version >= packaging_version.Version("2.6")
    assert version >= packaging_version.Version("2.0.0")
    assert version < packaging_version.Version("3.0")
    assert featherlight.__version__.startswith("2.")
    assert tuple(int(x) for x in featherlight.__version__.split(".")[:2]) >= (2, 6)


def test_same_version_on_every_face():
    import featherlight.fabric
    import featherlight.pytorch

    assert featherlight.pytorch.__version__ == featherlight.fabric.__version__ == featherlight.__version__
    assert featherlight.pytorch.__featherlight_version__ == featherlight.__featherlight_version__


def test_featherlight_version_is_the_package_version():
    text = (_ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == featherlight.__featherlight_version__


def test_checkpoints_record_featherlight_own_version(tmp_path):
    from featherlight.demos.boring_classes import BoringModel

    trainer = featherlight.Trainer(default_root_dir=tmp_path, max_steps=1, logger=False, enable_checkpointing=False,
                                   enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    checkpoint = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert checkpoint["featherlight_version"] == featherlight.__featherlight_version__ == "0.1.0"
    assert checkpoint["pytorch-lightning_version"] == "2.5.0"  # unchanged: Lightning's migrations read it
