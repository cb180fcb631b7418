"""Resuming with another number of processes: a 2-rank DDP checkpoint resumed in one process, and a
single-process checkpoint resumed by 2 DDP ranks, at epoch boundaries and mid-epoch (ModelCheckpoint every
n steps, the SIGTERM ``interrupted.ckpt``).

What must hold (see ``featherlight/trainer/resume.py``):

* weights, optimizer (momentum), epoch and global_step continue exactly; every optimizer step is one global
  step whatever the world size;
* mid-epoch, the interrupted epoch goes on with exactly the samples of its order not trained on yet, each
  once, split over the new ranks: rank ``r`` of ``W`` reads ``order[consumed:][r::W]``;
* the final weights equal a plain replay of the same steps in one process (one 2-rank DDP step on batches
  ``a`` and ``b`` is one step on ``a + b``, same-size halves and a mean loss).

Two 2-rank launches (``scripts/ddp_world_size.py``); the single-process runs happen in this process.
"""
import json
import os
import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

import fl_dist_models as models  # noqa: E402
from fl_dist_run import run_script  # noqa: E402

import featherlight as L  # noqa: E402
from featherlight.callbacks import ModelCheckpoint  # noqa: E402

N, BATCH = 32, 4


def _loader():
    return DataLoader(models.IndexedData(N), batch_size=BATCH, shuffle=True)


class _Record(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append([trainer.current_epoch, batch_idx, trainer.global_step, batch[0].tolist()])


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _steps(*ranks):
    """{global_step: (epoch, batch_idx, sorted ids of every rank)} from per-rank records of one run."""
    out = {}
    for rows in ranks:
        for epoch, batch_idx, step, ids in rows:
            prev = out.get(step, (epoch, batch_idx, []))
            assert prev[:2] == (epoch, batch_idx)
            out[step] = (epoch, batch_idx, prev[2] + ids)
    return out


def _replay(*step_maps):
    """The weights of one process taking the given steps (each a set of sample ids) from the initial model."""
    data = models.IndexedData(N)
    model = models.Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=model.lr, momentum=0.9)
    for steps in step_maps:
        for step in sorted(steps):
            ids = torch.tensor(sorted(steps[step][2]))
            opt.zero_grad()
            F.mse_loss(model(data.x[ids]), data.y[ids]).backward()
            opt.step()
    return model.state_dict()


def _close(weights, reference, atol=1e-6):
    for k, v in reference.items():
        torch.testing.assert_close(torch.as_tensor(weights[k], dtype=torch.float64), v.double(), atol=atol,
                                   rtol=1e-5, msg=k)


def _ddp_order(epoch):
    g = torch.Generator()
    g.manual_seed(epoch)  # DistributedSampler: seed (PL_GLOBAL_SEED, unset: 0) + epoch
    return torch.randperm(N, generator=g).tolist()


def _resume_in_one_process(ckpt, epochs):
    model, record = models.Regressor(), _Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_val_batches=0,
                        enable_checkpointing=False, callbacks=[record], **models.FLAGS)
    trainer.fit(model, _loader(), ckpt_path=ckpt)
    return model.state_dict(), trainer.global_step, record.rows


@pytest.fixture(scope="module")
def two_rank_save(tmp_path_factory):
    """A 2-rank job: checkpoints every 3 steps and every epoch, then SIGTERM (saved at batch 50, epoch 12)."""
    out = tmp_path_factory.mktemp("ws_save")
    code, output, _ = run_script("ddp_world_size.py", out, "save", cwd=out, timeout=180)
    assert code == 143, output[-6000:]
    assert (out / "steps" / "interrupted.ckpt").is_file()
    save = _steps(_read(out / "ids_save_rank0.jsonl"), _read(out / "ids_save_rank1.jsonl"))
    assert sorted(save) == list(range(1, 51))
    return out, save


@pytest.mark.parametrize(("ckpt", "epochs", "epoch", "done"), [
    ("steps/epoch=0-step=3.ckpt", 1, 0, 3),  # epoch 0 after batch 2 of 4: 24 samples done, 8 left
    ("steps/epoch=1-step=6.ckpt", 2, 1, 2),  # epoch 1 after batch 1: 16 done, 16 left
    ("steps/interrupted.ckpt", 13, 12, 2),  # the SIGTERM checkpoint: epoch 12 after batch 1
])
def test_ddp_two_ranks_to_one_mid_epoch(two_rank_save, ckpt, epochs, epoch, done):
    out, save = two_rank_save
    step = epoch * 4 + done
    weights, global_step, rows = _resume_in_one_process(str(out / ckpt), epochs)
    order = _ddp_order(epoch)
    before = [s for s in save.values() if s[0] == epoch and s[1] < done]
    # the 2-rank job trained on order[:16*done/2]: rank r took order[r::2] four at a time
    assert sorted(i for s in before for i in s[2]) == sorted(order[:2 * BATCH * done])
    resumed = [r for r in rows if r[0] == epoch]
    # the rest of the epoch, in the same order, each sample once, as the epoch's last batch indices
    assert [i for r in resumed for i in r[3]] == order[2 * BATCH * done:]
    assert [r[1] for r in resumed] == list(range(8 - len(resumed), 8))
    counts = Counter(i for s in before for i in s[2]) + Counter(i for r in resumed for i in r[3])
    assert counts == Counter(range(N))
    # global_step simply continues: one per optimizer step
    assert [r[2] for r in rows] == list(range(step + 1, step + 1 + len(rows)))
    assert global_step == step + len(rows) == step + (N - 2 * BATCH * done) // BATCH
    resumed_steps = _steps(rows)
    _close(weights, _replay({s: v for s, v in save.items() if s <= step}, resumed_steps))


def test_ddp_two_ranks_to_one_at_epoch_boundaries(two_rank_save):
    out, save = two_rank_save
    # the epoch-end checkpoint of epoch 1: epoch 2 runs whole in one process (8 batches of 4)
    weights, global_step, rows = _resume_in_one_process(str(out / "epochs" / "epoch=1-step=8.ckpt"), 3)
    assert global_step == 16 and [r[:3] for r in rows] == [[2, b, 9 + b] for b in range(8)]
    assert sorted(i for r in rows for i in r[3]) == list(range(N))
    _close(weights, _replay({s: v for s, v in save.items() if s <= 8}, _steps(rows)))
    # saved after the last batch of epoch 2 (before the epoch's end): nothing of epoch 2 is left
    weights, global_step, rows = _resume_in_one_process(str(out / "steps" / "epoch=2-step=12.ckpt"), 4)
    assert global_step == 20 and [r[:3] for r in rows] == [[3, b, 13 + b] for b in range(8)]
    assert sorted(i for r in rows for i in r[3]) == list(range(N))
    _close(weights, _replay({s: v for s, v in save.items() if s <= 12}, _steps(rows)))


def test_one_process_to_two_ranks(tmp_path):
    """A single-process run's checkpoints resumed by 2 DDP ranks: mid-epoch (the resumed epoch starting at batch
    0 and later) and at an epoch boundary."""
    record = _Record()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path,
        callbacks=[record, ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=3, save_top_k=-1),
                   ModelCheckpoint(dirpath=tmp_path / "epochs", save_top_k=-1)], **models.FLAGS)
    trainer.fit(models.Regressor(), _loader())
    single = _steps(record.rows)
    order = [i for s in sorted(single) if single[s][0] == 1 for i in single[s][2]]  # epoch 1's order
    assert sorted(order) == list(range(N))
    code, output, _ = run_script("ddp_world_size.py", tmp_path, "resume", tmp_path, cwd=tmp_path, timeout=180)
    assert code == 0, output[-6000:]
    results = [json.load(open(tmp_path / f"resume_rank{r}.json")) for r in (0, 1)]
    for name, step in (("from_single_mid_start0", 9), ("from_single_mid", 12)):
        ranks = [_read(tmp_path / f"ids_{name}_rank{r}.jsonl") for r in (0, 1)]
        consumed = (step - 8) * BATCH
        rest = order[consumed:]
        for r in (0, 1):
            # rank r reads the rest of the order by stride, 4 at a time; the epoch ends with its last batch index
            assert [i for row in ranks[r] for i in row[3]] == rest[r::2]
            assert ranks[r][-1][1] == 3 and [row[1] for row in ranks[r]] == list(range(4 - len(ranks[r]), 4))
        counts = Counter(i for s in single.values() if s[0] == 1 and s[1] < step - 8 for i in s[2])
        counts += Counter(i for rows in ranks for row in rows for i in row[3])
        assert counts == Counter(range(N))
        resumed = _steps(*ranks)
        assert sorted(resumed) == list(range(step + 1, step + 1 + len(resumed)))
        assert results[0][name]["global_step"] == results[1][name]["global_step"] == step + len(resumed)
        assert results[0][name]["weights"] == results[1][name]["weights"]
        _close(results[0][name]["weights"], _replay({s: v for s, v in single.items() if s <= step}, resumed))
    # epoch boundary: epoch 1 in 2 ranks (DistributedSampler's order for epoch 1), global_step 8 -> 12
    ranks = [_read(tmp_path / f"ids_from_single_epoch_rank{r}.jsonl") for r in (0, 1)]
    order = _ddp_order(1)
    for r in (0, 1):
        assert [i for row in ranks[r] for i in row[3]] == order[r::2]
    assert results[0]["from_single_epoch"]["global_step"] == 12
    _close(results[0]["from_single_epoch"]["weights"],
           _replay({s: v for s, v in single.items() if s <= 8}, _steps(*ranks)))


def test_continued_epoch_checkpointed_again(two_rank_save, tmp_path):
    """A checkpoint taken inside an epoch that was itself continued from another world size resumes too."""
    out, _ = two_rank_save
    order = _ddp_order(12)
    model, record = models.Regressor(), _Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=13, limit_val_batches=0, default_root_dir=tmp_path,
                        callbacks=[record, ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)],
                        **models.FLAGS)
    trainer.fit(model, _loader(), ckpt_path=str(out / "steps" / "interrupted.ckpt"))
    # batches 4, 5 (steps 51, 52) ran here, the checkpoint at step 52 records order[:16 + 8] as done
    weights, global_step, rows = _resume_in_one_process(str(tmp_path / "epoch=12-step=52.ckpt"), 13)
    assert [r[:3] for r in rows] == [[12, 6, 53], [12, 7, 54]]
    assert [i for r in rows for i in r[3]] == order[24:]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(weights[k], v)


def test_custom_sampler_cannot_continue_and_says_so(two_rank_save):
    out, _ = two_rank_save
    data = models.IndexedData(N)
    loader = DataLoader(data, batch_size=BATCH, sampler=list(range(N)))  # a plain list as the sampler
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=13, limit_val_batches=0, enable_checkpointing=False,
                        **models.FLAGS)
    with pytest.warns(UserWarning, match="cannot continue the interrupted epoch's sample order.*custom sampler"):
        trainer.fit(models.Regressor(), loader, ckpt_path=str(out / "steps" / "interrupted.ckpt"))
    assert trainer.global_step == 50 + 6  # documented fallback: batches 2..7 of its own (whole) share
