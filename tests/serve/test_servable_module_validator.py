import socket

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.pytorch.serve import ServableModule, ServableModuleValidator
from featherlight.utilities.exceptions import MisconfigurationException


class Servable(L.LightningModule, ServableModule):
    def __init__(self, expected=None):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.dropout = torch.nn.Dropout(0.5)
        self.expected = expected
        self.modes_seen = []

    def forward(self, x):
        return self.layer(self.dropout(x))

    def training_step(self, batch, batch_idx):
        return self(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)

    # ---- the serving interface
    def configure_payload(self):
        return {"body": {"x": [1.0, 2.0, 3.0, 4.0]}}

    def configure_serialization(self):
        return {"x": lambda v: torch.tensor(v).unsqueeze(0)}, {"output": lambda t: t.argmax().item()}

    def serve_step(self, x):
        self.modes_seen.append((self.training, torch.is_grad_enabled()))
        return {"output": self(x)}

    def configure_response(self):
        if self.expected is not None:
            return self.expected
        with torch.no_grad():
            self.eval()
            answer = self(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).argmax().item()
            self.train()
        return {"output": answer}


def fit(model, validator, **kwargs):
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[validator], **kwargs)
    trainer.fit(model)
    return trainer


def test_a_servable_model_is_served_and_its_answer_checked_while_training():
    model, validator = Servable(), ServableModuleValidator(port=0)
    trainer = fit(model, validator)
    assert validator.successful is True and validator.resp.json() == model.configure_response()
    assert model.modes_seen == [(False, False)]  # served in eval mode without gradients
    assert model.training and trainer.global_step == 2  # training mode back, the run went on
    assert validator.state_dict() == {"successful": True, "optimization": None, "server": "fastapi"}


def test_a_different_answer_is_an_error_naming_both():
    with pytest.raises(RuntimeError, match=r"expected response \{'output': 99\} doesn't match"):
        fit(Servable(expected={"output": 99}), ServableModuleValidator(port=0))


def test_a_failing_serve_step_names_the_error():
    class Broken(Servable):
        def serve_step(self, x):
            return self(x)  # not a dict

    with pytest.raises(MisconfigurationException, match="must return a dict"):
        fit(Broken(), ServableModuleValidator(port=0))
    validator = ServableModuleValidator(port=0, exit_on_failure=False)
    fit(Broken(), validator)
    assert validator.successful is False and validator.resp.status_code == 500


def test_a_module_that_is_not_servable():
    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)

    with pytest.raises(TypeError, match="subclass of ServableModule"):
        fit(Plain(), ServableModuleValidator())


def test_a_taken_port_falls_back_to_a_free_one():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        validator = ServableModuleValidator(port=taken.getsockname()[1])
        fit(Servable(), validator)
    assert validator.successful


def test_unsupported_options_are_refused():
    with pytest.raises(NotImplementedError, match="optimization"):
        ServableModuleValidator(optimization="onnx")
    with pytest.raises(NotImplementedError, match="server='fastapi'"):
        ServableModuleValidator(server="torchserve")
