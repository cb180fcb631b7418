"""A small word-level language model on WikiText-2, with the names and signatures of Lightning's demo
(``lightning.pytorch.demos.transformer``): :class:`Transformer`, :class:`WikiText2`, :class:`LightningTransformer`.

The dataset is the training split of WikiText-2 as the PyTorch examples ship it (one text file of about 10 MB),
downloaded on first use unless ``download=False``; the file can also be put at ``data_dir/wikitext-2.txt`` by hand.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from featherlight.core.module import LightningModule

__all__ = ["Dictionary", "LightningTransformer", "PositionalEncoding", "Transformer", "WikiText2", "tokenize"]

_WIKITEXT2_URL = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/train.txt"


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal position code of each position to a ``(batch, time, dim)`` input, then dropout."""

    def __init__(self, dim: int, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.dim = dim
        self.max_len = max_len
        # built on first use, on the input's device; not a parameter or buffer (nothing to save or synchronise)
        self.pe: Optional[Tensor] = None

    def _table(self, device: torch.device) -> Tensor:
        position = torch.arange(self.max_len, dtype=torch.float, device=device).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, self.dim, 2, device=device).float() * (-math.log(10000.0) / self.dim))
        table = torch.zeros(self.max_len, self.dim, device=device)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency[: self.dim // 2])
        return table.unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        if self.pe is None or self.pe.device != x.device:
            self.pe = self._table(x.device)
        return self.dropout(x + self.pe[:, : x.size(1)])


class Transformer(nn.Module):
    """An encoder-decoder ``nn.Transformer`` over word embeddings; :meth:`forward` returns the log-probabilities of
    the next word for every position, flattened to ``(batch * time, vocab_size)``.

    Args:
        vocab_size: number of words (33278 is WikiText-2's).
        ninp: embedding size.
        nhead: attention heads.
        nhid: feed-forward size.
        nlayers: encoder and decoder layers (each).
        dropout: dropout probability.
    """

    def __init__(self, vocab_size: int = 33278, ninp: int = 200, nhead: int = 2, nhid: int = 200, nlayers: int = 2,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.embedding = nn.Embedding(vocab_size, ninp)
        self.transformer = nn.Transformer(d_model=ninp, nhead=nhead, num_encoder_layers=nlayers,
                                          num_decoder_layers=nlayers, dim_feedforward=nhid, dropout=dropout,
                                          batch_first=True)
        self.decoder = nn.Linear(ninp, vocab_size)
        self.ninp = ninp
        self.vocab_size = vocab_size
        self.src_mask: Optional[Tensor] = None

    @staticmethod
    def generate_square_subsequent_mask(size: int) -> Tensor:
        """A ``(size, size)`` additive mask: ``-inf`` above the diagonal, so a position sees no later one."""
        return torch.full((size, size), float("-inf")).triu(diagonal=1)

    def forward(self, inputs: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Log-probabilities ``(batch * time, vocab_size)`` for ``target`` given ``inputs`` (both ``(batch, time)``
        word indices); ``mask`` defaults to the causal mask."""
        length = inputs.size(1)
        if self.src_mask is None or self.src_mask.size(0) != length or self.src_mask.device != inputs.device:
            self.src_mask = self.generate_square_subsequent_mask(length).to(inputs.device)
        if mask is None:
            mask = self.src_mask
        scale = math.sqrt(self.ninp)
        src = self.pos_encoder(self.embedding(inputs) * scale)
        tgt = self.pos_encoder(self.embedding(target) * scale)
        output = self.decoder(self.transformer(src, tgt, tgt_mask=mask))
        return F.log_softmax(output, dim=-1).view(-1, self.vocab_size)


class Dictionary:
    """Words and their indices, in order of first appearance."""

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        """The index of ``word``, adding it if new."""
        index = self.word2idx.get(word)
        if index is None:
            index = self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return index

    def __len__(self) -> int:
        return len(self.idx2word)


def tokenize(path: Union[str, Path]) -> tuple[Tensor, Dictionary]:
    """The words of the text file at ``path`` (whitespace-separated, ``<eos>`` after every line) as one tensor of
    indices, and the dictionary that maps them.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No text file at {os.fspath(path)!r} to tokenize.")
    dictionary = Dictionary()
    ids: list[int] = []
    with open(path, encoding="utf8") as f:
        for line in f:
            ids.extend(dictionary.add_word(word) for word in [*line.split(), "<eos>"])
    return torch.tensor(ids, dtype=torch.int64), dictionary


class WikiText2(Dataset):
    """WikiText-2's training text as ``(inputs, target)`` pairs of ``block_size`` word indices, the target shifted
    by one word.

    Args:
        data_dir: folder of ``wikitext-2.txt``.
        block_size: words per sample.
        download: fetch the file if it is not in ``data_dir`` yet (needs the network); with ``False`` a missing
            file is an error.
    """

    def __init__(self, data_dir: Path = Path("./data"), block_size: int = 35, download: bool = True) -> None:
        super().__init__()
        self.path = Path(data_dir) / "wikitext-2.txt"
        if download:
            self.download(self.path)
        self.data, self.dictionary = tokenize(self.path)
        self.block_size = block_size

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)

    def __len__(self) -> int:
        return len(self.data) // self.block_size - 1

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.block_size
        end = start + self.block_size
        return self.data[start:end], self.data[start + 1 : end + 1]

    @staticmethod
    def download(destination: Path) -> None:
        """Fetch the text to ``destination`` unless it is already there (written atomically: an interrupted
        download leaves no file behind)."""
        destination = Path(destination)
        if destination.exists():
            return
        import urllib.request

        from featherlight.io.atomic import atomic_write

        destination.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(_WIKITEXT2_URL) as response:  # noqa: S310 - a fixed https URL
            content = response.read()
        atomic_write(destination, lambda f: f.write(content))


class LightningTransformer(LightningModule):
    """:class:`Transformer` trained with SGD (lr 0.1) on :class:`WikiText2` (downloaded in ``prepare_data``)."""

    def __init__(self, vocab_size: int = 33278) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size)

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        return self.model(inputs, target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        return F.nll_loss(self(inputs, target), target.view(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=0.1)

    def prepare_data(self) -> None:
        WikiText2(download=True)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(WikiText2())
