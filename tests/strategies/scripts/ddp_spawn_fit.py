"""``ddp_spawn`` / ``ddp_fork``: the run happens in worker processes; rank 0's results come back here.

    python ddp_spawn_fit.py OUTDIR STRATEGY [validate] [predict]

Writes ``parent.json`` with what the calling process sees after fit, validate and predict.
"""
import os
import sys

import featherlight as L
from featherlight.callbacks import ModelCheckpoint
from fl_dist_models import FLAGS, N_PREDICT, Regressor, outdir_from_argv, save_json, state_to_lists, train_loader, \
    val_loader

if __name__ == "__main__":
    out = outdir_from_argv()
    strategy = sys.argv[2]
    model = Regressor()
    ckpt = ModelCheckpoint(dirpath=os.path.join(out, "ckpts"), monitor="val_loss", save_top_k=1)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, callbacks=[ckpt],
                        num_sanity_val_steps=0, **FLAGS)
    trainer.fit(model, train_loader(), val_loader())
    result = dict(
        strategy=type(trainer.strategy).__name__, start_method=trainer.strategy.start_method,
        weights=state_to_lists(model.state_dict()),
        metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
        global_step=trainer.global_step, current_epoch=trainer.current_epoch, status=str(trainer.state.status),
        best_model_path=ckpt.best_model_path, best_model_score=float(ckpt.best_model_score),
        files=sorted(os.listdir(os.path.join(out, "ckpts"))),
    )
    if "validate" in sys.argv[3:]:
        result["validate"] = trainer.validate(model, val_loader(), verbose=False)
    if "predict" in sys.argv[3:]:
        preds = trainer.predict(model, val_loader(batch_size=2, n=N_PREDICT))
        result["predicted_indices"] = [int(i) for p in preds for i in p["idx"]]
    save_json(out, "parent.json", result)
