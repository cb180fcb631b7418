"""MLFlowLogger against the real ``mlflow`` package: a local file store, and a real tracking server (``mlflow
server`` with a SQLite backend store) started by the test on a free localhost port. Everything is read back with
``MlflowClient``."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from featherlight.callbacks import ModelCheckpoint  # noqa: E402
from featherlight.loggers import MLFlowLogger  # noqa: E402
from featherlight.utilities.rank_zero import rank_zero_only  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _tracker_models import TinyModel, trainer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:MLFlowLogger tracks to the file store")


@pytest.fixture
def file_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"file:{tmp_path / 'mlruns'}"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    """A real ``mlflow server`` with a SQLite backend store and proxied artifacts, on a free localhost port."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log_file = open(root / "server.log", "wb")  # noqa: SIM115
    # its own session, so that stopping it also stops the web server processes it starts
    proc = subprocess.Popen(cmd, cwd=root, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            log_file.close()
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.25)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log_file.close()


def _artifacts(client, run_id, path=None):
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(_artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return sorted(out)


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("store", ["file", "server"])
def test_fit_logs_params_metrics_tags_and_status(store, tmp_path, request):
    uri = request.getfixturevalue("file_uri" if store == "file" else "server_uri")
    logger = MLFlowLogger(experiment_name=f"exp-{store}", run_name="first", tracking_uri=uri, tags={"team": "a"})
    model = TinyModel(nested={"opt": {"betas": [0.9, 0.99]}, "name": "adam"})
    trainer(logger, tmp_path).fit(model)

    client = MlflowClient(uri)
    assert isinstance(logger.experiment, MlflowClient)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == logger.experiment_id == logger.name
    assert logger.version == logger.run_id
    assert client.get_experiment(logger.experiment_id).name == f"exp-{store}"
    assert run.data.tags["mlflow.runName"] == "first"
    assert run.data.tags["team"] == "a"
    # hyperparameters: nested dicts flattened with "/", values as strings
    params = run.data.params
    assert params["lr"] == "0.1"
    assert params["nested/opt/betas"] == "[0.9, 0.99]"
    assert params["nested/name"] == "adam"
    # metrics with their steps: 4 training steps per epoch, logged every step
    train = _history(client, logger.run_id, "train_loss")
    assert [s for s, _ in train] == list(range(8))
    assert train[-1][1] < train[0][1]
    assert [s for s, _ in _history(client, logger.run_id, "val_loss")] == [3, 7]
    assert [v for _, v in _history(client, logger.run_id, "epoch")][-1] == 1.0
    if store == "file":
        assert logger.save_dir == uri[len("file:") :]
    else:
        assert logger.save_dir is None


@pytest.mark.parametrize("store", ["file", "server"])
def test_failed_fit_marks_the_run_failed(store, tmp_path, request):
    uri = request.getfixturevalue("file_uri" if store == "file" else "server_uri")
    logger = MLFlowLogger(experiment_name="failing", tracking_uri=uri)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(logger, tmp_path).fit(TinyModel(fail_at_step=5))
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"
    # what was logged before the failure is there
    assert [s for s, _ in _history(client, logger.run_id, "train_loss")] == list(range(5))


def test_keyboard_interrupt_marks_the_run_killed(tmp_path, file_uri):
    logger = MLFlowLogger(experiment_name="interrupted", tracking_uri=file_uri)
    trainer_ = trainer(logger, tmp_path)
    try:
        trainer_.fit(TinyModel(fail_at_step=2, interrupt=True))
    except (KeyboardInterrupt, SystemExit):
        pass
    assert MlflowClient(file_uri).get_run(logger.run_id).info.status == "KILLED"


def test_finalize_status_names(file_uri):
    client = MlflowClient(file_uri)
    for status, expected in [("success", "FINISHED"), ("failed", "FAILED"), ("KILLED", "KILLED"), ("finished", "FINISHED")]:
        logger = MLFlowLogger(tracking_uri=file_uri)
        logger.log_metrics({"x": 1.0}, step=0)
        logger.finalize(status)
        assert client.get_run(logger.run_id).info.status == expected
    # never started: nothing to finalize, no run created
    untouched = MLFlowLogger(experiment_name="never", tracking_uri=file_uri)
    untouched.finalize("success")
    assert client.get_experiment_by_name("never") is None


def test_default_tracking_uri_is_a_file_store_in_save_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    logger = MLFlowLogger(save_dir=str(tmp_path / "runs"))
    assert logger.save_dir == str(tmp_path / "runs")
    with pytest.warns(UserWarning, match="MLFLOW_ALLOW_FILE_STORE"):
        run_id = logger.run_id
    assert os.path.isdir(tmp_path / "runs" / logger.experiment_id / run_id)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'from_env'}")
    assert MLFlowLogger().save_dir == str(tmp_path / "from_env")


def test_sqlite_tracking_uri(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    logger = MLFlowLogger(experiment_name="sql", tracking_uri=uri, artifact_location=str(tmp_path / "art"))
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"m": 0.5}, step=3)
    logger.finalize("success")
    client = MlflowClient(uri)
    assert client.get_experiment(logger.experiment_id).artifact_location.endswith("art")
    run = client.get_run(logger.run_id)
    assert run.data.params == {"a": "1"}
    assert _history(client, logger.run_id, "m") == [(3, 0.5)]
    assert logger.save_dir is None


# ---------------------------------------------------------------------------------------------------- resume
def test_run_id_attaches_to_an_existing_run(tmp_path, file_uri):
    first = MLFlowLogger(experiment_name="resume", tracking_uri=file_uri)
    trainer(first, tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")]).fit(TinyModel())
    ckpt = str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt")

    again = MLFlowLogger(tracking_uri=file_uri, run_id=first.run_id)
    trainer(again, tmp_path, max_epochs=2).fit(TinyModel(), ckpt_path=ckpt)  # same hparams: logging them again is fine
    assert again.run_id == first.run_id
    assert again.experiment_id == first.experiment_id
    client = MlflowClient(file_uri)
    assert [s for s, _ in _history(client, first.run_id, "train_loss")] == list(range(8))
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert len(client.search_runs([first.experiment_id])) == 1


def test_changed_param_values_warn_instead_of_failing(file_uri):
    logger = MLFlowLogger(tracking_uri=file_uri)
    logger.log_hyperparams({"a": 1, "b": 2})
    logger.log_hyperparams({"a": 1})  # same value again: nothing to say
    with pytest.warns(UserWarning, match=r"params cannot change.*\['b'\]"):
        logger.log_hyperparams({"b": 3, "c": 4})
    logger.finalize("success")
    assert MlflowClient(file_uri).get_run(logger.run_id).data.params == {"a": "1", "b": "2", "c": "4"}


# ---------------------------------------------------------------------------------------------------- values and keys
def test_long_params_many_params_and_namespace(file_uri):
    from argparse import Namespace

    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    logger = MLFlowLogger(tracking_uri=file_uri)
    many = {f"p{i}": i for i in range(250)}  # more than one log_batch may carry
    logger.log_hyperparams(Namespace(**many))
    with pytest.warns(UserWarning, match="were cut"):
        logger.log_hyperparams({"long": "x" * (MAX_PARAM_VAL_LENGTH + 10)})
    logger.finalize("success")
    params = MlflowClient(file_uri).get_run(logger.run_id).data.params
    assert len(params) == 251
    assert params["p249"] == "249"
    assert params["long"] == "x" * MAX_PARAM_VAL_LENGTH


def test_metric_keys_prefix_and_string_values(file_uri):
    torch = pytest.importorskip("torch")
    logger = MLFlowLogger(tracking_uri=file_uri, prefix="train")
    with pytest.warns(RuntimeWarning, match="is logged as 'train-accpct'"):
        logger.log_metrics({"acc%pct": 1.0, "loss": torch.tensor(0.5), "note": "text"}, step=2)
    logger.log_metrics({"acc%pct": 2.0}, step=None)  # warned once per key; no step is step 0
    logger.finalize("success")
    client = MlflowClient(file_uri)
    assert sorted(client.get_run(logger.run_id).data.metrics) == ["train-accpct", "train-loss"]
    assert _history(client, logger.run_id, "train-loss") == [(2, 0.5)]
    assert _history(client, logger.run_id, "train-accpct") == [(0, 2.0), (2, 1.0)]


@pytest.mark.parametrize("synchronous", [None, False, True])
def test_synchronous_and_buffered_logging(file_uri, synchronous):
    logger = MLFlowLogger(tracking_uri=file_uri, synchronous=synchronous)
    for step in range(5):
        logger.log_metrics({"v": float(step)}, step=step)
    client = MlflowClient(file_uri)
    if synchronous:
        # sent and waited for on every call
        assert len(client.get_metric_history(logger.run_id, "v")) == 5
    logger.save()
    logger.finalize("success")
    assert _history(client, logger.run_id, "v") == [(s, float(s)) for s in range(5)]


def test_buffered_metrics_are_sent_at_exit(tmp_path):
    # a script that logs without a Trainer and never calls finalize must not lose the buffered values
    uri = f"file:{tmp_path / 'mlruns'}"
    script = (
        "from featherlight.loggers import MLFlowLogger\n"
        f"logger = MLFlowLogger(tracking_uri={uri!r})\n"
        "for s in range(3): logger.log_metrics({'v': s}, step=s)\n"
        "print(logger.run_id)\n"
    )
    env = dict(os.environ, MLFLOW_ALLOW_FILE_STORE="true")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    run_id = out.stdout.strip().splitlines()[-1]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    assert [s for s, _ in _history(MlflowClient(uri), run_id, "v")] == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_log_model_all_uploads_each_checkpoint_with_metadata(tmp_path, file_uri):
    logger = MLFlowLogger(tracking_uri=file_uri, log_model="all", checkpoint_path_prefix="models/v1")
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    trainer(logger, tmp_path, callbacks=[callback]).fit(TinyModel())
    client = MlflowClient(file_uri)
    files = _artifacts(client, logger.run_id)
    # both epochs' checkpoints were uploaded right after they were saved, although top-1 deleted the first file
    assert files == [
        f"models/v1/epoch={e}-step={s}/{name}"
        for e, s in [(0, 4), (1, 8)]
        for name in ("aliases.txt", f"epoch={e}-step={s}.ckpt", "metadata.yaml")
    ]
    local = client.download_artifacts(logger.run_id, "models/v1/epoch=1-step=8", str(tmp_path / "dl"))
    metadata = yaml.safe_load(open(os.path.join(local, "metadata.yaml")))
    assert metadata["original_filename"] == "epoch=1-step=8.ckpt"
    assert metadata["Checkpoint"]["monitor"] == "val_loss"
    assert metadata["score"] == pytest.approx(float(callback.best_model_score))
    assert open(os.path.join(local, "aliases.txt")).read() == "['latest', 'best']"
    with open(os.path.join(local, "epoch=1-step=8.ckpt"), "rb") as a, open(callback.best_model_path, "rb") as b:
        assert a.read() == b.read()
    # the upload snapshots are gone
    assert not [f for f in os.listdir(tmp_path / "ckpt") if f.startswith(".featherlight-upload")]


def test_log_model_true_uploads_at_the_end(tmp_path, file_uri):
    logger = MLFlowLogger(tracking_uri=file_uri, log_model=True)
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1, save_last=True)
    trainer(logger, tmp_path, callbacks=[callback]).fit(TinyModel())
    top = sorted({path.split("/")[0] for path in _artifacts(MlflowClient(file_uri), logger.run_id)})
    assert top == ["epoch=1-step=8", "last"]  # only what exists at the end


def test_log_model_true_with_save_top_k_all_uploads_during_training(tmp_path, file_uri):
    logger = MLFlowLogger(tracking_uri=file_uri, log_model=True)
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer(logger, tmp_path, callbacks=[callback]).fit(TinyModel())
    top = sorted({path.split("/")[0] for path in _artifacts(MlflowClient(file_uri), logger.run_id)})
    assert top == ["epoch=0-step=4", "epoch=1-step=8"]


def test_log_model_to_the_server(tmp_path, server_uri):
    logger = MLFlowLogger(experiment_name="server-models", tracking_uri=server_uri, log_model="all")
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=1, monitor="val_loss")
    trainer(logger, tmp_path, callbacks=[callback]).fit(TinyModel())
    files = _artifacts(MlflowClient(server_uri), logger.run_id)
    assert "epoch=1-step=8/epoch=1-step=8.ckpt" in files
    assert "epoch=0-step=4/metadata.yaml" in files


def test_checkpoint_dir_follows_save_dir_name_and_version(tmp_path, file_uri):
    logger = MLFlowLogger(tracking_uri=file_uri)
    trainer_ = trainer(logger, tmp_path, max_epochs=1)
    trainer_.fit(TinyModel())
    expected = os.path.join(logger.save_dir, logger.experiment_id, logger.run_id, "checkpoints")
    assert trainer_.checkpoint_callback.dirpath == expected
    assert os.listdir(expected) == ["epoch=0-step=4.ckpt"]


# ---------------------------------------------------------------------------------------------------- ranks, pickling
def test_other_ranks_create_nothing(tmp_path, file_uri, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = MLFlowLogger(experiment_name="rank1", tracking_uri=file_uri)
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"m": 1.0}, step=0)
    logger.experiment.log_param("ignored", "x")  # a dummy experiment on other ranks
    logger.after_save_checkpoint(ModelCheckpoint())
    logger.finalize("success")
    assert not os.path.exists(tmp_path / "mlruns")


def test_pickle_round_trip_reconnects_to_the_same_run(file_uri):
    import pickle

    logger = MLFlowLogger(tracking_uri=file_uri)
    logger.log_metrics({"a": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))
    copy.log_metrics({"a": 2.0}, step=1)
    copy.finalize("success")
    logger.finalize("success")
    assert [s for s, _ in _history(MlflowClient(file_uri), logger.run_id, "a")] == [0, 1]
    assert copy.run_id == logger.run_id
