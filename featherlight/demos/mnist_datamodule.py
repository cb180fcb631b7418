"""MNIST for demos and tests, with the names and signatures of Lightning's ``lightning.pytorch.demos.mnist_datamodule``:
:func:`MNIST` (a dataset) and :class:`MNISTDataModule` (train/val split of the training set, and the test set).

Without torchvision (or with ``PL_USE_MOCKED_MNIST`` set) the dataset is Lightning's hosted copy of MNIST as two
tensor files, ``{root}/MNIST/complete/training.pt`` and ``test.pt`` (each ``torch.save((images, labels))``); they
are downloaded only when ``download=True`` and a file is missing, and read with ``weights_only=True``.
"""
from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Sized
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, random_split

from featherlight.core.datamodule import LightningDataModule
from featherlight.io.atomic import atomic_write
from featherlight.io.load import load_checkpoint
from featherlight.utilities.imports import _IS_WINDOWS, _TORCHVISION_AVAILABLE

__all__ = ["MNIST", "MNISTDataModule"]

log = logging.getLogger(__name__)

_DATASETS_PATH = "./data"


class _MNIST(Dataset):
    """MNIST from the two tensor files described in the module docstring; samples are ``(1x28x28 float image,
    int label)``, normalised with ``normalize = (mean, std)`` unless it is ``None``."""

    RESOURCES = (
        "https://pl-public-data.s3.amazonaws.com/MNIST/processed/training.pt",
        "https://pl-public-data.s3.amazonaws.com/MNIST/processed/test.pt",
    )
    TRAIN_FILE_NAME = "training.pt"
    TEST_FILE_NAME = "test.pt"
    cache_folder_name = "complete"

    def __init__(self, root: str, train: bool = True, normalize: Optional[tuple] = (0.1307, 0.3081),
                 download: bool = True, **kwargs: Any) -> None:
        super().__init__()
        self.root = root
        self.train = train
        self.normalize = normalize
        self.prepare_data(download)
        name = self.TRAIN_FILE_NAME if train else self.TEST_FILE_NAME
        self.data, self.targets = load_checkpoint(os.path.join(self.cached_folder_path, name), require_dict=False)

    def __getitem__(self, idx: int) -> tuple[Tensor, int]:
        img = self.data[idx].float().unsqueeze(0)
        if self.normalize is not None and len(self.normalize) == 2:
            img = self.normalize_tensor(img, *self.normalize)
        return img, int(self.targets[idx])

    def __len__(self) -> int:
        return len(self.data)

    @property
    def cached_folder_path(self) -> str:
        return os.path.join(self.root, "MNIST", self.cache_folder_name)

    def _check_exists(self, data_folder: str) -> bool:
        return all(os.path.isfile(os.path.join(data_folder, name)) for name in (self.TRAIN_FILE_NAME,
                                                                                   self.TEST_FILE_NAME))

    def prepare_data(self, download: bool = True) -> None:
        """Download the files if asked and missing.

        Raises:
            RuntimeError: if the files are missing (and not downloaded).
        """
        if download and not self._check_exists(self.cached_folder_path):
            self._download(self.cached_folder_path)
        if not self._check_exists(self.cached_folder_path):
            raise RuntimeError(f"Dataset not found in {self.cached_folder_path!r}: pass `download=True`, or put "
                               f"{self.TRAIN_FILE_NAME} and {self.TEST_FILE_NAME} there.")

    def _download(self, data_folder: str) -> None:
        os.makedirs(data_folder, exist_ok=True)
        for url in self.RESOURCES:
            log.info(f"Downloading {url}")
            with urllib.request.urlopen(url) as response:  # noqa: S310 - fixed https URLs
                content = response.read()
            # atomic: processes downloading at once, or one interrupted, never leave a torn file for a reader
            atomic_write(os.path.join(data_folder, os.path.basename(url)), lambda f, c=content: f.write(c))

    @staticmethod
    def normalize_tensor(tensor: Tensor, mean: Union[int, float] = 0.0, std: Union[int, float] = 1.0) -> Tensor:
        mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device)
        std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device)
        return tensor.sub(mean).div(std)


def MNIST(*args: Any, **kwargs: Any) -> Dataset:  # noqa: N802 - Lightning's name
    """The MNIST dataset: torchvision's ``MNIST(root, train=..., download=..., transform=...)`` when torchvision is
    installed (and ``PL_USE_MOCKED_MNIST`` is not set), else the hosted tensor files (``MNIST(root, train=True,
    normalize=(0.1307, 0.3081), download=True)``). Nothing is downloaded unless ``download=True``."""
    if _TORCHVISION_AVAILABLE and not os.getenv("PL_USE_MOCKED_MNIST"):
        from torchvision.datasets import MNIST as TorchvisionMNIST

        try:
            return TorchvisionMNIST(*args, **{k: v for k, v in kwargs.items() if k != "normalize"})
        except urllib.error.URLError as err:
            print(f"Error {err} downloading `torchvision.datasets.MNIST`; using the hosted copy instead")
    return _MNIST(*args, **kwargs)


class MNISTDataModule(LightningDataModule):
    """MNIST: ``val_split`` images of the training set for validation (a fixed split), the rest for training, and
    the test set.

    Args:
        data_dir: where the data is (or is downloaded to, in ``prepare_data``).
        val_split: how many training images validate.
        num_workers: dataloader workers (0 on Windows, with a warning).
        normalize: with torchvision, normalise images to mean 0.5, std 0.5.
        seed: kept for Lightning's signature; the split always uses seed 42.
        batch_size: samples per batch.
    """

    name = "mnist"

    def __init__(self, data_dir: str = _DATASETS_PATH, val_split: int = 5000, num_workers: int = 16,
                 normalize: bool = False, seed: int = 42, batch_size: int = 32) -> None:
        super().__init__()
        if num_workers and _IS_WINDOWS:
            warnings.warn(f"You asked for num_workers={num_workers} on Windows, where 0 is recommended; using 0.",
                          stacklevel=2)
            num_workers = 0
        self.data_dir = data_dir
        self.val_split = val_split
        self.num_workers = num_workers
        self.normalize = normalize
        self.seed = seed
        self.batch_size = batch_size

    @property
    def num_classes(self) -> int:
        return 10

    def prepare_data(self) -> None:
        """Download MNIST to ``data_dir`` if it is not there."""
        MNIST(self.data_dir, train=True, download=True)
        MNIST(self.data_dir, train=False, download=True)

    def setup(self, stage: str) -> None:
        """Split the training set into training and validation."""
        extra = {"transform": self.default_transforms} if self.default_transforms else {}
        dataset = MNIST(self.data_dir, train=True, download=False, **extra)
        assert isinstance(dataset, Sized)
        self.dataset_train, self.dataset_val = random_split(
            dataset, [len(dataset) - self.val_split, self.val_split], generator=torch.Generator().manual_seed(42)
        )

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=True, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        extra = {"transform": self.default_transforms} if self.default_transforms else {}
        return self._loader(MNIST(self.data_dir, train=False, download=False, **extra), shuffle=False)

    @property
    def default_transforms(self) -> Optional[Callable]:
        """torchvision's ``ToTensor`` (then ``Normalize(0.5, 0.5)`` with ``normalize``); ``None`` without
        torchvision."""
        if not _TORCHVISION_AVAILABLE or os.getenv("PL_USE_MOCKED_MNIST"):
            return None
        from torchvision import transforms

        if self.normalize:
            return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=(0.5,), std=(0.5,))])
        return transforms.ToTensor()
