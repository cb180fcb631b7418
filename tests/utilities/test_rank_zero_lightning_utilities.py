"""featherlight gives `lightning_utilities`' rank_zero_only the rank it knows, without ever importing that package.

Each check runs in a fresh interpreter: the import order (lightning_utilities before or after featherlight) is the
point, and this test process may already hold either module.
"""
import subprocess
import sys

import pytest

pytest.importorskip("lightning_utilities")


def _run(code: str, **env: str) -> str:
    import os

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_rank_given_on_import_when_lightning_utilities_came_first():
    out = _run(
        "import lightning_utilities.core.rank_zero as lu\n"
        "assert getattr(lu.rank_zero_only, 'rank', None) is None\n"
        "import featherlight\n"
        "print(lu.rank_zero_only.rank, lu.rank_zero_only(lambda: 'ran')())\n"
    )
    assert out == "0 ran"


def test_rank_from_the_environment():
    out = _run(
        "import lightning_utilities.core.rank_zero as lu\nimport featherlight\n"
        "print(lu.rank_zero_only.rank, lu.rank_zero_only(lambda: 'ran')())\n",
        RANK="3",
    )
    assert out == "3 None"


def test_featherlight_never_imports_lightning_utilities():
    out = _run("import sys, featherlight, featherlight.fabric.utilities.rank_zero\n"
               "from featherlight.utilities.rank_zero import set_global_rank\nset_global_rank(0)\n"
               "print([m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning'))])")
    assert out == "[]"


def test_set_global_rank_updates_lightning_utilities():
    out = _run(
        "import featherlight\nimport lightning_utilities.core.rank_zero as lu\n"
        "from featherlight.utilities.rank_zero import rank_zero_only, set_global_rank\n"
        "set_global_rank(2)\n"
        "print(rank_zero_only.rank, lu.rank_zero_only.rank, lu.rank_zero_only(lambda: 'ran')())\n"
    )
    assert out == "2 2 None"


def test_lightning_utilities_imported_later_gets_the_rank_at_its_import():
    # a template's logger calls lightning_utilities' rank_zero_only before any Trainer exists (importing Lightning
    # sets that rank; featherlight watches for the module's import instead of importing it)
    out = _run(
        "import featherlight as L\nimport lightning_utilities.core.rank_zero as lu\n"
        "print(lu.rank_zero_only.rank, lu.rank_zero_only(lambda: 'ran')())\n"
        "import sys; print([type(f).__name__ for f in sys.meta_path if 'Share' in type(f).__name__])\n"
    )
    assert out.splitlines() == ["0 ran", "[]"]  # the watcher left after its one use
    assert _run("import featherlight\nimport lightning_utilities.core.rank_zero as lu\nprint(lu.rank_zero_only.rank)",
                RANK="3") == "3"


def test_the_watcher_answers_nothing_for_other_modules():
    out = _run("import featherlight, json, email.mime.text, inspect\n"
               "import lightning_utilities.core.rank_zero as lu\n"
               "print(lu.__spec__.name, inspect.getsource(lu.rank_zero_only).startswith('def'))")
    assert out == "lightning_utilities.core.rank_zero True"  # the module's loader still serves its source
