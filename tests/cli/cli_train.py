"""The training program the CLI tests run in a subprocess: ``python cli_train.py fit --help`` etc."""
from cli_models import Data, Net

from featherlight.cli import LightningCLI

if __name__ == "__main__":
    LightningCLI(Net, Data, trainer_defaults={"enable_progress_bar": False, "enable_model_summary": False})
