"""The seed guide's pitfalls (../shared/seed, "Pitfalls"): each bad version warns once with the fix, the good
version beside it stays silent."""
import json
import os
import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import featherlight as L

SCRIPTS = os.path.join(os.path.dirname(__file__), os.pardir, "strategies", "scripts")


def fit(model, loader=None, epochs=1, **kwargs):
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader)
    return [str(w.message) for w in caught]


def loader(n=16):
    return DataLoader(TensorDataset(torch.randn(n, 4)), batch_size=4)


class Base(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def loss(self, batch):
        return self.layer(batch[0] if isinstance(batch, (list, tuple)) else batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def matching(messages, text):
    return [m for m in messages if text in m]


# ---------------------------------------------------------------- the loss not returned
class ForgetsToReturn(Base):
    def training_step(self, batch, batch_idx):
        self.loss(batch)  # computed, not returned


class ReturnsNoneUnderLoss(Base):
    def training_step(self, batch, batch_idx):
        return {"loss": None}


class ReturnsTheLoss(Base):
    def training_step(self, batch, batch_idx):
        return self.loss(batch)


def test_the_loss_not_returned_names_the_return_and_the_fix():
    bad = fit(ForgetsToReturn(), loader())
    assert len(matching(bad, "`training_step` returned `None`")) == 1  # once, not per batch
    assert "return loss" in matching(bad, "returned `None`")[0]
    assert matching(fit(ReturnsNoneUnderLoss(), loader()), "returned a dict whose 'loss' is `None`")
    assert not matching(fit(ReturnsTheLoss(), loader()), "`training_step` returned")


# ---------------------------------------------------------------- the graph kept on the module
class KeepsLosses(Base):
    def __init__(self, detach):
        super().__init__()
        self.detach, self.losses = detach, []

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.losses.append(loss.detach() if self.detach else loss)
        return loss


def test_tensors_with_their_graph_kept_on_the_module_are_named_at_the_first_epoch_end():
    bad = matching(fit(KeepsLosses(detach=False), loader(), epochs=2), "attached to their autograd graph")
    assert len(bad) == 1 and "`self.losses`" in bad[0] and "loss.detach()" in bad[0]
    assert not matching(fit(KeepsLosses(detach=True), loader(), epochs=2), "autograd graph")


# ---------------------------------------------------------------- in-place edits of a batch handed out again
class CachedViews(Dataset):
    """Each sample is a view into one tensor the dataset keeps (a cached dataset)."""

    def __init__(self):
        self.data = torch.randn(4, 4, 4)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


class EditsBatch(Base):
    def __init__(self, in_place):
        super().__init__()
        self.in_place = in_place

    def training_step(self, batch, batch_idx):
        if self.in_place:
            batch.mul_(2)
        else:
            batch = batch * 2
        return self.loss(batch)


def test_in_place_edits_of_a_batch_the_loader_hands_out_again():
    dataset = CachedViews()
    before = dataset.data.clone()
    bad = matching(fit(EditsBatch(in_place=True), DataLoader(dataset, batch_size=None)), "changed its batch in place")
    assert len(bad) == 1 and "clone()" in bad[0]
    assert not torch.equal(dataset.data, before)  # what the warning is about: the cached data really changed
    assert not matching(fit(EditsBatch(in_place=False), DataLoader(CachedViews(), batch_size=None)), "in place")
    # a collated batch is a fresh tensor each time: editing it in place harms nothing and is not flagged
    assert not matching(fit(EditsBatch(in_place=True), DataLoader(CachedViews(), batch_size=2)), "in place")


def test_in_place_edits_under_overfit_batches():
    bad = fit(EditsBatch(in_place=True), DataLoader(CachedViews(), batch_size=2), overfit_batches=2)
    assert matching(bad, "changed its batch in place")


# ---------------------------------------------------------------- .cuda() inside a step
class MovesToCuda(Base):
    def training_step(self, batch, batch_idx):
        return self.loss([batch[0].cuda()])


class UsesSelfDevice(Base):
    def training_step(self, batch, batch_idx):
        noise = torch.zeros(batch[0].shape, device=self.device)
        return self.loss([batch[0] + noise])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the bad version works where CUDA is available")
def test_cuda_in_a_step_without_cuda_names_self_device():
    with pytest.raises((AssertionError, RuntimeError)) as info:
        fit(MovesToCuda(), loader())
    text = str(info.value) + "\n".join(getattr(info.value, "__notes__", []))
    assert "`training_step` moved a tensor to a device by hand" in text and "device=self.device" in text
    assert not matching(fit(UsesSelfDevice(), loader()), "by hand")


# ---------------------------------------------------------------- a host read of a device value every step
class ItemEveryStep(Base):
    def __init__(self):
        super().__init__()
        self.total = 0.0

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.total += loss.item()  # waits for the device on every step
        return loss


class LogsTheTensor(Base):
    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("loss", loss)  # reduced at the logging interval, no host read here
        if batch_idx == 0:
            print(loss.item())  # once is not "every step"
        return loss


class CpuInCallback(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last = outputs["loss"].detach().cpu()


@pytest.fixture
def as_accelerator(monkeypatch):
    """Without a GPU here, count CPU tensors as device tensors (the watch is on only off the host)."""
    from featherlight.trainer import pitfalls

    monkeypatch.setattr(pitfalls, "_HOST_DEVICES", ("meta",))


def test_a_host_read_on_every_step_names_the_hook_and_line(as_accelerator):
    bad = matching(fit(ItemEveryStep(), loader()), "on every step")
    assert len(bad) == 1 and "`training_step` (test_pitfalls.py:" in bad[0] and "`.item()`" in bad[0]
    assert "self.log(" in bad[0]
    bad = matching(fit(LogsTheTensor(), loader(), callbacks=[CpuInCallback()]), "on every step")
    assert len(bad) == 1 and "`on_train_batch_end`" in bad[0] and "`.cpu()`" in bad[0]
    assert "training_step" not in bad[0]
    assert not matching(fit(LogsTheTensor(), loader()), "on every step")
    assert torch.Tensor.item is torch._C.TensorBase.item  # the wrapping is gone after the watched steps


def test_no_watch_on_the_host_and_none_left_after_a_failed_step():
    assert not matching(fit(ItemEveryStep(), loader()), "on every step")  # a CPU run: .item() costs no wait

    class Fails(ItemEveryStep):
        def training_step(self, batch, batch_idx):
            raise ValueError("boom")

    from featherlight.trainer import pitfalls

    original = pitfalls._HOST_DEVICES
    pitfalls._HOST_DEVICES = ("meta",)
    try:
        with pytest.raises(ValueError):
            fit(Fails(), loader())
    finally:
        pitfalls._HOST_DEVICES = original
    assert torch.Tensor.item is torch._C.TensorBase.item and "__bool__" not in vars(torch.Tensor)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_host_read_on_every_step_on_cuda():
    assert matching(fit(ItemEveryStep(), loader(), accelerator="cuda", devices=1), "on every step")
    assert not matching(fit(LogsTheTensor(), loader(), accelerator="cuda", devices=1), "on every step")


# ---------------------------------------------------------------- under DDP: sync_dist, a dataset in __init__
@pytest.fixture(scope="module")
def ddp_pitfalls(tmp_path_factory):
    sys.path.insert(0, os.path.abspath(SCRIPTS))
    from fl_dist_run import load_ranks, run_script

    out = str(tmp_path_factory.mktemp("ddp_pitfalls"))
    code, output, _ = run_script("ddp_pitfalls.py", out, cwd=out, timeout=180)
    assert code == 0, output
    return load_ranks(out)


def test_epoch_level_log_without_sync_dist_under_ddp_warns_as_lightning(ddp_pitfalls):
    rank0 = ddp_pitfalls[0]
    text = "It is recommended to use `self.log('train_loss', ..., sync_dist=True)`"
    assert len(matching(rank0["no_sync_dist"], text)) == 1
    assert not matching(rank0["sync_dist"], "sync_dist=True")
    assert not matching(fit(type("Single", (ReturnsTheLoss,), {
        "training_step": lambda self, b, i: (self.log("l", self.loss(b), on_epoch=True), self.loss(b))[1]})(),
        loader()), "sync_dist")  # one process: nothing to accumulate


def test_a_dataset_built_in_init_under_ddp_points_to_a_datamodule(ddp_pitfalls):
    rank0 = ddp_pitfalls[0]
    bad = matching(rank0["dataset_in_init"], "`self.dataset` (a TensorDataset)")
    assert len(bad) == 1 and "prepare_data" in bad[0] and "setup" in bad[0]
    assert not matching(rank0["sync_dist"], "LightningDataModule")
