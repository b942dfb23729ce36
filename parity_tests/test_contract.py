"""Every framework module of every model satisfies the declared contract (tasks/contract.py)."""

from __future__ import annotations

import types

import pytest

from tasks import contract
from tasks.registry import FRAMEWORKS, MODELS, load_impl


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("model", list(MODELS))
def test_module_satisfies_the_contract(model, framework):
    assert contract.violations(load_impl(framework, model), contract.protocol_for(model)) == []


def test_the_check_can_fail():
    """A module missing a function, a keyword or with an extra required argument is reported."""

    def train(model, data, *, epochs, lr, seed):  # no batch_size, no on_epoch
        return []

    def evaluate(model, x, y, extra):  # a fourth positional argument nobody passes
        return 0.0, 1.0

    broken = types.SimpleNamespace(__name__="broken", train=train, evaluate=evaluate)
    found = contract.violations(broken, contract.GradientModelModule)
    for expected in (
        "broken: no create_model()",
        "broken: no forward_backward()",
        "broken.train: got an unexpected keyword argument 'batch_size'",
        "broken.evaluate: missing a required argument: 'extra'",
    ):
        assert expected in found, found
