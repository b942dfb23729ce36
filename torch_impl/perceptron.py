"""Perceptron in PyTorch: an nn.Linear neuron, a step output, the rule applied under torch.no_grad().

Rosenblatt (1958), "The perceptron: a probabilistic model for information storage and organization
in the brain". There is no loss and no gradient: after each sample, w += lr (y - ŷ) x and
b += lr (y - ŷ), which changes nothing when the prediction was right.
Tie rule, the same in all four files: ŷ = 1 if w·x + b > 0, else 0 (a point on the line is 0).
nn.Linear stores weight (out, in), the canonical layout, so weights load without a transform.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks import weights
from tasks.configs import PerceptronConfig
from tasks.data import Dataset
from torch_impl import porting
from torch_impl.data import EpochSampler


# ----------------------------------------------------------------------------- layers
def step(z):
    """Heaviside step with the tie rule: 1 where z > 0, 0 where z <= 0."""
    return (z > 0).to(z.dtype)


# ----------------------------------------------------------------------------- model
class Perceptron(nn.Module):
    """One neuron: a weighted sum, then a step."""

    def __init__(self, cfg: PerceptronConfig, *, generator: torch.Generator, dtype=torch.float64):
        super().__init__()
        self.cfg = cfg
        self.neuron = nn.Linear(cfg.in_features, 1, dtype=dtype)
        # nn.Linear draws from torch's global RNG; redraw from the generator we were given
        bound = 1.0 / np.sqrt(cfg.in_features)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound, generator=generator)

    def forward(self, x):
        return step(self.neuron(x))[
            :, 0
        ]  # (B, D) -> (B, 1) -> (B,): 0.0 or 1.0 in the model's dtype


def create_model(
    cfg: PerceptronConfig, *, seed: int, dtype: str = "float64", device: str | torch.device = "cpu"
) -> Perceptron:
    """Weights drawn on the CPU, then moved: one seed gives the same model on every device."""
    model = Perceptron(
        cfg, generator=torch.Generator().manual_seed(seed), dtype=getattr(torch, dtype)
    )
    return model.to(device)


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model: Perceptron) -> dict:
    """The one stock layer by canonical prefix, with its torch_impl/porting.py function (as is)."""
    return {"neuron.": ("dense", model.neuron, {})}


def load_canonical(model: Perceptron, params: dict[str, np.ndarray]) -> None:
    weights.check(
        params, model.cfg.param_shapes(), model.neuron.weight.detach().cpu().numpy().dtype
    )
    porting.load_layers(canonical_layers(model), params)


def export_canonical(model: Perceptron) -> dict[str, np.ndarray]:
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict(model: Perceptron, x, *, device="cpu") -> np.ndarray:
    """Class labels (B,) as int64."""
    x = torch.as_tensor(x, dtype=model.neuron.weight.dtype, device=device)
    return model(x).long().cpu().numpy()


# ----------------------------------------------------------------------------- train step
@torch.no_grad()  # in-place changes to a parameter are an error under autograd; here no graph is recorded
def train_step(model: Perceptron, x, y, lr) -> int:
    """One sample (x (D,), y 0.0 or 1.0): the perceptron rule in place. Returns 1 on a mistake."""
    error = y - model(x[None])[0]  # (1, D) -> (1,) -> (): +1 missed a 1, -1 missed a 0, 0 right
    # lr * x first: times error (+1, 0 or -1) it stays exact, so an FMA (XLA fuses one) rounds alike
    model.neuron.weight.add_(error * (lr * x))  # (D,) broadcasts over (1, D)
    model.neuron.bias.add_(lr * error)  # () broadcasts over (1,)
    return int(error != 0)


def train_epoch(model: Perceptron, samples, lr) -> int:
    """One pass over (x, y) samples in the given order; returns the number of mistakes."""
    return sum(train_step(model, x, y, lr) for x, y in samples)


def train(
    model: Perceptron,
    data: Dataset,
    *,
    epochs: int,
    lr: float,
    seed: int,
    on_epoch=None,
    device="cpu",
) -> list[int]:
    """Per-sample updates in the shared shuffled order; stops after the first epoch with no mistake.

    Returns the number of mistakes of each epoch run; a last entry of 0 means converged.
    """
    dtype = model.neuron.weight.dtype
    dataset = TensorDataset(
        torch.as_tensor(data.x_train, dtype=dtype), torch.as_tensor(data.y_train, dtype=dtype)
    )
    # sampler = the shared order; batch_size=None hands out single samples, not batches of one
    sampler = EpochSampler(len(dataset), seed)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None)
    lr = torch.tensor(lr, dtype=dtype, device=device)  # the step size in the model's dtype
    history = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        samples = ((x.to(device), y.to(device)) for x, y in loader)
        history.append(train_epoch(model, samples, lr))
        if on_epoch:
            on_epoch(epoch, history[-1])
        if history[-1] == 0:
            break  # every sample was right, so the rule changed nothing: further epochs would repeat this one
    return history


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: Perceptron, x, y, *, device="cpu") -> tuple[int, float]:
    """(mistakes, accuracy) on a whole split."""
    wrong = predict(model, x, device=device) != y
    return int(wrong.sum()), float(1.0 - wrong.mean())
