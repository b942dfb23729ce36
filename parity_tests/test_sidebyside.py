"""The four files of a model share their section rulers, and the drift measure counts real drift."""

from __future__ import annotations

import pytest

from tasks import sidebyside
from tasks.registry import FRAMEWORKS

MODEL_FILES = ("mlp", "lenet5", "recurrent", "attention")


@pytest.mark.parametrize("model_file", MODEL_FILES)
def test_every_framework_file_has_the_sections_in_order(model_file):
    for framework in FRAMEWORKS:
        found = [
            s for s in sidebyside.sections(sidebyside.read(framework, model_file)) if s != "header"
        ]
        assert found == list(sidebyside.SECTIONS), (framework, found)


def test_differing_lines_ignores_wrapping_and_names_but_not_code():
    torch_text = "import torch\n\nx = torch.zeros(3, dtype=torch.float64)  # (B,)\n"
    jax_text = (
        "import jax.numpy as jnp\n\nx = jnp.zeros(\n    3,\n    dtype=jnp.float64,\n)  # (B,)\n"
    )
    assert (
        sidebyside.differing_lines(torch_text, "torch_impl", jax_text, "jax_impl") == 2
    )  # the imports
    changed = jax_text.replace("zeros", "ones")
    assert sidebyside.differing_lines(torch_text, "torch_impl", changed, "jax_impl") == 4
