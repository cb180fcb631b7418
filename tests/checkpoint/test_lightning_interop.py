"""Checkpoints move between featherlight and Lightning 2.x both ways: same top-level keys, same loop
counters, and each framework resumes the other's checkpoints where it would resume its own.

Skipped when Lightning is not installed (it is only a test dependency)."""
from __future__ import annotations

import logging
import os
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pytest.importorskip("lightning")
import lightning.pytorch as L  # noqa: E402

import featherlight as F  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::Warning")]


@pytest.fixture(autouse=True)
def _quiet():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def make_model(pl, n_batches=4, interval="epoch", manual=False, log=None):
    class Model(pl.LightningModule):
        def __init__(self, hidden: int = 3, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(4, hidden), nn.Linear(hidden, 1))
            self.automatic_optimization = not manual
            self.seen_optimizer_state = None

        def training_step(self, batch, batch_idx):
            if log is not None:
                log.append(("t", self.current_epoch, batch_idx, self.global_step))
            loss = self.net(batch).pow(2).mean()
            if manual:
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            return loss

        def validation_step(self, batch, batch_idx):
            if log is not None:
                log.append(("v", self.current_epoch, batch_idx, self.global_step))
            self.log("val_loss", self.net(batch).pow(2).mean())

        def on_train_start(self):
            opt = self.trainer.optimizers[0]
            self.seen_optimizer_state = {k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
                                         for k, v in opt.state_dict()["state"].items()}

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.9)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

        def train_dataloader(self):
            return DataLoader(torch.arange(n_batches * 8, dtype=torch.float32).reshape(-1, 4), batch_size=2)

        def val_dataloader(self):
            return DataLoader(torch.ones(4, 4), batch_size=2)

    return Model


def make_datamodule(pl):
    class DataModule(pl.LightningDataModule):
        def __init__(self, batch_size: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.restored = None

        def train_dataloader(self):
            return DataLoader(torch.randn(16, 4), batch_size=self.hparams.batch_size)

        def val_dataloader(self):
            return DataLoader(torch.randn(4, 4), batch_size=2)

        def state_dict(self):
            return {"cursor": 5}

        def load_state_dict(self, state):
            self.restored = state

    return DataModule


def _trainer(pl, root, **kwargs):
    base = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                num_sanity_val_steps=0, default_root_dir=root)
    base.update(kwargs)
    return pl.Trainer(**base)


def _load(path):
    return torch.load(path, weights_only=False)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------------------------------- content
def test_top_level_keys_match_lightning(tmp_path):
    from featherlight.callbacks import EarlyStopping as FES
    from featherlight.precision.precision import MixedPrecision as FMP
    from lightning.pytorch.callbacks import EarlyStopping as LES
    from lightning.pytorch.plugins.precision import MixedPrecision as LMP

    checkpoints = {}
    for name, pl, es, mp in (("L", L, LES, LMP), ("F", F, FES, FMP)):
        trainer = _trainer(pl, tmp_path / name, max_epochs=2, limit_train_batches=4, enable_checkpointing=True,
                           callbacks=[es(monitor="val_loss", patience=5)],
                           plugins=[mp("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))])
        trainer.fit(make_model(pl)(hidden=5), datamodule=make_datamodule(pl)(batch_size=2))
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        checkpoints[name] = _load(tmp_path / f"{name}.ckpt")
    lc, fc = checkpoints["L"], checkpoints["F"]
    assert {"MixedPrecision", "hparams_name", "hyper_parameters", "datamodule_hparams_name",
            "datamodule_hyper_parameters", "loops", "callbacks"} <= set(lc)
    assert set(lc) <= set(fc)
    assert all(k.startswith("featherlight_") for k in set(fc) - set(lc)), set(fc) - set(lc)
    for key in ("epoch", "global_step", "hparams_name", "hyper_parameters", "datamodule_hparams_name",
                "datamodule_hyper_parameters"):
        assert fc[key] == lc[key], key
    assert fc["MixedPrecision"].keys() == lc["MixedPrecision"].keys()  # the GradScaler's state
    dm_key = make_datamodule(L).__qualname__
    assert fc[dm_key] == lc[dm_key] == {"cursor": 5}
    assert set(fc["callbacks"]) == set(lc["callbacks"])
    assert fc["state_dict"].keys() == lc["state_dict"].keys()
    assert fc["lr_schedulers"] == lc["lr_schedulers"]
    for fo, lo in zip(fc["optimizer_states"], lc["optimizer_states"]):
        assert fo["param_groups"] == lo["param_groups"]
        assert fo["state"].keys() == lo["state"].keys()
        assert all(fo["state"][i].keys() == lo["state"][i].keys() for i in fo["state"])
    assert _flat(fc["loops"]).keys() == _flat(lc["loops"]).keys()
    assert _comparable(_flat(fc["loops"])) == _comparable(_flat(lc["loops"]))


class _Saver:
    """Save from the hooks ModelCheckpoint uses (and at the end of every epoch), in either framework."""

    @staticmethod
    def make(pl, root, saved):
        class Saver(pl.Callback):
            def _save(self, trainer, where):
                path = os.path.join(root, f"{len(saved):03d}-{where}-e{trainer.current_epoch}-g{trainer.global_step}.ckpt")
                trainer.save_checkpoint(path)
                saved.append(path)

            def on_train_batch_end(self, trainer, *args):
                self._save(trainer, "batch_end")

            def on_validation_end(self, trainer, *args):
                if not trainer.sanity_checking:
                    self._save(trainer, "val_end")

            def on_train_epoch_end(self, trainer, *args):
                self._save(trainer, "epoch_end")

        return Saver()


def _save_everywhere(pl, root, config, n_batches=4, interval="epoch", manual=False):
    saved = []
    os.makedirs(root, exist_ok=True)
    kwargs = dict(max_epochs=2)
    kwargs.update(config)
    trainer = _trainer(pl, root, callbacks=[_Saver.make(pl, root, saved)], **kwargs)
    trainer.fit(make_model(pl, n_batches, interval, manual)())
    trainer.save_checkpoint(os.path.join(root, "999-after-fit.ckpt"))
    saved.append(os.path.join(root, "999-after-fit.ckpt"))
    return saved


CONFIGS = {
    "no-val": ({"limit_val_batches": 0}, 4, "epoch", False),
    "val-every-2": ({"val_check_interval": 2}, 4, "step", False),
    "accumulate-3": ({"limit_val_batches": 0, "accumulate_grad_batches": 3}, 4, "step", False),
    "accumulate-2-val-3": ({"val_check_interval": 3, "accumulate_grad_batches": 2}, 5, "epoch", False),
    "max-steps": ({"max_steps": 6, "max_epochs": -1}, 4, "step", False),
    "manual": ({"val_check_interval": 2}, 4, "epoch", True),
}


def _comparable(flat, keep_val_flag=False):
    """Every counter but the validation progress (Lightning keeps it per run of validation, which we do not
    count, and reads it only to resume inside a validation); its "done" flag is kept where we know it."""
    return {k: v for k, v in flat.items()
            if "val_loop.batch_progress" not in k or (keep_val_flag and k.endswith("is_last_batch"))}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_loops_match_lightning_at_every_hook(tmp_path, config):
    kwargs, n_batches, interval, manual = CONFIGS[config]
    lightning_files = _save_everywhere(L, tmp_path / "L", kwargs, n_batches, interval, manual)
    ours = _save_everywhere(F, tmp_path / "F", kwargs, n_batches, interval, manual)
    assert [os.path.basename(p) for p in ours] == [os.path.basename(p) for p in lightning_files]
    for lp, fp in zip(lightning_files, ours):
        if config == "max-steps" and "after-fit" in lp:
            # the run stopped inside an epoch: Lightning keeps that epoch's counts (and on resume carries on
            # with its remaining batches under the next epoch number); we count the epoch as done
            continue
        lflat = _comparable(_flat(_load(lp)["loops"]), keep_val_flag="val_end" in lp)
        fflat = _comparable(_flat(_load(fp)["loops"]), keep_val_flag="val_end" in lp)
        diff = {k: (lflat.get(k), fflat.get(k)) for k in set(lflat) | set(fflat) if lflat.get(k) != fflat.get(k)}
        assert not diff, (os.path.basename(lp), diff)


# ------------------------------------------------------------------------------------------- resuming
def _resume(pl, path, config, n_batches, interval, manual=False):
    log = []
    kwargs = dict(max_epochs=3)
    kwargs.update(config)
    if kwargs.get("max_epochs") == -1:
        kwargs["max_steps"] += 3
    trainer = _trainer(pl, os.path.dirname(path), **kwargs)
    model = make_model(pl, n_batches, interval, manual, log)()
    trainer.fit(model, ckpt_path=path)
    train_log = [entry for entry in log if entry[0] == "t"]
    return train_log, trainer.current_epoch, trainer.global_step, model.seen_optimizer_state


def _assert_same_optimizer_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys()
        for n in a[k]:
            torch.testing.assert_close(a[k][n], b[k][n])


@pytest.mark.parametrize("config", ["val-every-2", "accumulate-2-val-3", "max-steps", "manual"])
def test_lightning_resumes_featherlight_checkpoints_like_its_own(tmp_path, config):
    kwargs, n_batches, interval, manual = CONFIGS[config]
    lightning_files = _save_everywhere(L, tmp_path / "L", kwargs, n_batches, interval, manual)
    ours = _save_everywhere(F, tmp_path / "F", kwargs, n_batches, interval, manual)
    for lp, fp in zip(lightning_files, ours):
        if config == "max-steps" and "after-fit" in lp:
            continue  # stopped inside an epoch: see test_loops_match_lightning_at_every_hook
        expected = _resume(L, lp, kwargs, n_batches, interval, manual)
        got = _resume(L, fp, kwargs, n_batches, interval, manual)
        assert got[:3] == expected[:3], os.path.basename(lp)
        _assert_same_optimizer_state(got[3], {k: {n: t for n, t in v.items() if torch.is_tensor(t)}
                                              for k, v in _load(fp)["optimizer_states"][0]["state"].items()})


@pytest.mark.parametrize("config", ["no-val", "val-every-2", "accumulate-3", "accumulate-2-val-3", "manual"])
def test_featherlight_resumes_lightning_checkpoints_like_lightning(tmp_path, config):
    """Every checkpoint Lightning writes from the hooks ModelCheckpoint uses resumes in featherlight at the
    epoch, batch and global step Lightning itself resumes it at, with its optimizer state."""
    kwargs, n_batches, interval, manual = CONFIGS[config]
    for lp in _save_everywhere(L, tmp_path / "L", kwargs, n_batches, interval, manual):
        expected = _resume(L, lp, kwargs, n_batches, interval, manual)
        got = _resume(F, lp, kwargs, n_batches, interval, manual)
        assert got[:3] == expected[:3], os.path.basename(lp)
        _assert_same_optimizer_state(got[3], expected[3])


def test_featherlight_resumes_lightning_model_checkpoint_files(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = tmp_path / "ckpts"
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, monitor="val_loss", save_top_k=-1, save_last=True,
                                 filename="{epoch}-{step}"),
                 ModelCheckpoint(dirpath=ckpt_dir / "steps", every_n_train_steps=3, save_top_k=-1)]
    trainer = _trainer(L, tmp_path, max_epochs=2, val_check_interval=2, callbacks=callbacks,
                       enable_checkpointing=True)
    trainer.fit(make_model(L)())
    files = sorted(str(p) for p in ckpt_dir.rglob("*.ckpt"))
    assert len(files) >= 6
    for path in files:
        expected = _resume(L, path, {"val_check_interval": 2}, 4, "epoch")
        got = _resume(F, path, {"val_check_interval": 2}, 4, "epoch")
        assert got[:3] == expected[:3], path
        _assert_same_optimizer_state(got[3], expected[3])


# ------------------------------------------------------------------------------------------- load_from_checkpoint
def test_load_from_checkpoint_both_ways(tmp_path):
    for writer, reader in ((L, F), (F, L)):
        root = tmp_path / writer.__name__
        trainer = _trainer(writer, root, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
        model = make_model(writer)(hidden=6, lr=0.02)
        trainer.fit(model, datamodule=make_datamodule(writer)(batch_size=4))
        path = root / "model.ckpt"
        trainer.save_checkpoint(path)
        loaded = make_model(reader).load_from_checkpoint(path)
        assert dict(loaded.hparams) == {"hidden": 6, "lr": 0.02}
        for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            torch.testing.assert_close(a, b, msg=name)
        dm = make_datamodule(reader).load_from_checkpoint(path)
        assert dm.hparams.batch_size == 4 and dm.restored == {"cursor": 5}


def test_lightning_evaluates_featherlight_checkpoint(tmp_path):
    trainer = _trainer(F, tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(make_model(F)())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    results = _trainer(L, tmp_path).validate(make_model(L)(), ckpt_path=path)
    expected = _trainer(F, tmp_path).validate(make_model(F)(), ckpt_path=path)
    assert results[0]["val_loss"] == pytest.approx(expected[0]["val_loss"])
