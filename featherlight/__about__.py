"""featherlight's versions.

``__version__`` answers the question code written for Lightning asks of ``lightning.__version__``: which Lightning
API is this? Its public part is the Lightning release whose API featherlight implements, its local part (after
``+``) is featherlight's own release, so ``packaging.version.Version(__version__) >= Version("2.6")`` holds and
version checks take their newest paths. featherlight's own release (the package's version, what pip shows) is
``__featherlight_version__``.
"""

__featherlight_version__ = "0.1.0"  # keep equal to pyproject.toml's version
__lightning_version__ = "2.6.5"  # the Lightning API featherlight implements
__version__ = f"{__lightning_version__}+featherlight.{__featherlight_version__}"
