"""The banner Lightning's example programs print at start (``cli_lightning_logo()``).

It lives apart from :mod:`featherlight.cli` so that printing it never needs jsonargparse.
"""

FEATHERLIGHT_LOGO: str = r"""
            ___
        _.-'  /
     .-'     /     featherlight
   .'   .-' /      PyTorch training, Lightning's API
  /  .-'   /
 /.-'  _.-'
//_.-''
"""


def cli_lightning_logo() -> None:
    """Print featherlight's banner (the call Lightning's example programs make before starting their CLI)."""
    print(FEATHERLIGHT_LOGO)
