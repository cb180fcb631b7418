"""Two-rank DDP in one launch (``strategy="ddp"`` starts rank 1 by running this script again).

    python ddp_fit.py OUTDIR

Runs, in order: fit (2 epochs, uneven validation, collective counting, checkpoints), predict, a resumed fit
(to epoch 3) from the last checkpoint, a mid-epoch resume, a SyncBatchNorm fit, gradient accumulation (with a DDP comm hook
counting the all-reduces), manual optimization (one and two backward passes per step) and the strategy's
collectives called directly. Each rank writes ``rank{R}.json``.
"""
import os

import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

import featherlight as L
from featherlight.callbacks import ModelCheckpoint
from featherlight.plugins import TorchCheckpointIO
from featherlight.strategies import DDPStrategy
from fl_dist_models import (FLAGS, N_PREDICT, CollectiveCounter, ManualRegressor, Regressor, TwoOptimizerRegressor,
                            outdir_from_argv, save_json, state_to_lists, train_loader, val_loader)

out = outdir_from_argv()
ckpt_dir = os.path.join(out, "ckpts")
writes = []


class RecordingIO(TorchCheckpointIO):
    """The default checkpoint IO, recording which files this rank writes."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        writes.append(os.path.basename(os.fspath(path)))
        super().save_checkpoint(checkpoint, path, storage_options)


def make_trainer(epochs, callbacks=(), **kwargs):
    return L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=epochs, **FLAGS,
                     callbacks=list(callbacks), plugins=[RecordingIO()], **kwargs)


result = {}
# ---- fit: 2 epochs
counter = CollectiveCounter()
model = Regressor()
trainer = make_trainer(2, [counter, ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=-1)])
trainer.fit(model, train_loader(), val_loader())
rank = trainer.global_rank
result.update(
    rank=rank, world_size=trainer.world_size, weights=state_to_lists(model.state_dict()),
    metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
    collectives_per_batch=counter.per_batch, collectives_in_step=counter.in_step,
    num_val_batches=trainer.num_val_batches, num_training_batches=trainer.num_training_batches,
    global_step=trainer.global_step, checkpoint_writes=list(writes),
    ddp_type=counter.model_type, sampler=type(trainer.train_dataloader.sampler).__name__,
)
# ---- predict: each sample once across ranks
preds = trainer.predict(model, val_loader(batch_size=2, n=N_PREDICT))
result["predicted_indices"] = [int(i) for p in preds for i in p["idx"]]
# ---- resume from the last checkpoint to epoch 3
writes.clear()
model2 = Regressor()
trainer2 = make_trainer(3, [ModelCheckpoint(dirpath=os.path.join(out, "ckpts_mid"), every_n_train_steps=2,
                                            save_top_k=-1)], num_sanity_val_steps=0)
trainer2.fit(model2, train_loader(), val_loader(), ckpt_path=os.path.join(ckpt_dir, "last.ckpt"))
result.update(resumed_weights=state_to_lists(model2.state_dict()), resumed_global_step=trainer2.global_step,
              resumed_writes=list(writes))
# ---- mid-epoch resume: from the checkpoint taken after batch 2 of epoch 2, to the end of epoch 2
mid = Regressor()
trainer_mid = make_trainer(3, enable_checkpointing=False, num_sanity_val_steps=0)
trainer_mid.fit(mid, train_loader(), val_loader(), ckpt_path=os.path.join(out, "ckpts_mid", "epoch=2-step=10.ckpt"))
result.update(mid_resumed_weights=state_to_lists(mid.state_dict()), mid_resumed_step=trainer_mid.global_step)
# ---- SyncBatchNorm
bn = Regressor(batchnorm=True)
layer_types = []
probe = L.Callback()
probe.on_train_start = lambda trainer, pl_module: layer_types.append(type(pl_module.net[1]).__name__)
trainer3 = make_trainer(2, [probe], sync_batchnorm=True, enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
trainer3.fit(bn, train_loader())
result.update(bn_weights=state_to_lists(bn.state_dict()), bn_layer=layer_types[0],
              bn_layer_after=type(bn.net[1]).__name__)
# ---- gradient accumulation: DDP all-reduces only on the batch that closes a window (a comm hook counts)

hook_calls = []


def counting_hook(state, bucket):
    hook_calls.append(bucket.index())
    return allreduce_hook(state, bucket)


acc = Regressor()
trainer4 = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(ddp_comm_hook=counting_hook), max_epochs=1,
                     accumulate_grad_batches=2, enable_checkpointing=False, limit_val_batches=0, **FLAGS)
trainer4.fit(acc, train_loader())
result.update(acc_weights=state_to_lists(acc.state_dict()), acc_hook_calls=len(hook_calls))
# ---- manual optimization: backward inside training_step, i.e. inside DDP's forward
manual = ManualRegressor()
trainer5 = make_trainer(2, enable_checkpointing=False, limit_val_batches=0)
trainer5.fit(manual, train_loader())
result.update(manual_weights=state_to_lists(manual.state_dict()))
two = TwoOptimizerRegressor()
make_trainer(1, enable_checkpointing=False, limit_val_batches=0).fit(two, train_loader())
result.update(two_optimizer_weights=state_to_lists(two.state_dict()))
# ---- the collectives, called directly (after the runs, the process group is still up)
s = trainer.strategy
t = torch.tensor([float(rank + 1)])
x = torch.tensor(float(rank + 1), requires_grad=True)
gathered = s.all_gather(x, sync_grads=True)
(gathered * torch.tensor([1.0, 10.0])).sum().backward()
result["collectives"] = dict(
    mean=s.reduce(t, reduce_op="mean").tolist(), sum=s.reduce(t, reduce_op="sum").tolist(),
    max=s.reduce(t, reduce_op="max").tolist(), min=s.reduce(t, reduce_op="min").tolist(), input_kept=t.tolist(),
    gather=model.all_gather({"a": torch.tensor([rank, 10 * rank])})["a"].tolist(),
    gather_grad=x.grad.item(), broadcast=s.broadcast({"from": rank}, src=1),
    all_true=s.reduce_boolean_decision(rank == 0, all=True), any_true=s.reduce_boolean_decision(rank == 0, all=False),
)
save_json(out, f"rank{rank}.json", result)
