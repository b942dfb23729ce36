"""The layer-level porting API (torch_impl/porting.py, tf_impl/porting.py, jax_impl/porting.py)
against the stock layers themselves, float64.

For every stock layer and every ordered pair of frameworks A -> B: the stock layer of A gets random
weights in its own native layout (every bias non-zero, both torch RNN biases, both rows of Keras's
GRU bias), A's `*_to_canonical` and B's `*_from_canonical` port them, and B's own stock layer must
give A's outputs on the same input to 1e-12. Each framework's `*_to_canonical` (the inverse
direction) is exercised as A, so every rule is proven in both directions by the stock modules,
not by the suite's own code. Small sizes: the file runs in well under a minute.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

import jax_impl  # noqa: F401  (float64 in JAX before any array)
import tf_impl  # noqa: F401  (Keras on TensorFlow)

import jax.numpy as jnp  # isort: skip
import keras  # isort: skip
import torch  # isort: skip
from flax import nnx  # isort: skip

from jax_impl import porting as flax_porting  # isort: skip
from jax_impl.recurrent import GRUCell  # isort: skip
from tf_impl import porting as keras_porting  # isort: skip
from torch_impl import porting as torch_porting  # isort: skip

TOL = 1e-12
B, T, D, H = 2, 5, 3, 4  # batch, time, input features, hidden units
E, NH = 8, 2  # attention width and heads (HS = 4: Keras's float32 query scale 1/2 is exact)
S, KV = 6, 5  # cross-attention: memory length and width (kdim = vdim = KV != E, as Flax allows)
KD, VD = 5, 3  # kdim != vdim (torch and Keras only: nnx.MultiHeadAttention has one in_kv_features)
FLAT = (3, 2, 2)  # (C, H, W) of the map a flatten-dense reads
CONV_IN, CONV_OUT, K, SIDE = 2, 3, 3, 6
V = 7  # vocabulary
F64 = "float64"

LAYERS = (
    "dense",
    "dense_flatten",
    "conv2d",
    "embedding",
    "layer_norm",
    "batch_norm",
    "simple_rnn",
    "lstm",
    "lstm_optimized",
    "gru",
    "mha",
    "mha_kv",
)
PORTING = {"torch": torch_porting, "keras": keras_porting, "flax": flax_porting}
FUNCTION = {  # test layer -> porting function stem and layout keywords (the same in all three)
    "dense": ("dense", {}),
    "dense_flatten": ("dense", {"flatten_from": FLAT}),
    "conv2d": ("conv2d", {}),
    "embedding": ("embedding", {}),
    "layer_norm": ("layer_norm", {}),
    "batch_norm": ("batch_norm", {}),
    "simple_rnn": ("simple_rnn", {}),
    "lstm": ("lstm", {}),
    "lstm_optimized": ("lstm", {}),
    "gru": ("gru", {}),
    "mha": ("mha", {"num_heads": NH}),
    "mha_kv": ("mha", {"num_heads": NH}),
    "mha_kdim_vdim": ("mha", {"num_heads": NH}),
}


def make_input(layer: str, rng: np.random.Generator) -> np.ndarray:
    """Inputs in the canonical layout: images (B, C, H, W), sequences (B, T, D), tokens (B, T)."""
    if layer == "dense":
        return rng.normal(size=(B, 5))
    if layer == "dense_flatten":
        return rng.normal(size=(B, *FLAT))
    if layer == "conv2d":
        return rng.normal(size=(B, CONV_IN, SIDE, SIDE))
    if layer == "embedding":
        return rng.integers(0, V, size=(B, T))
    if layer in ("layer_norm", "batch_norm"):
        return rng.normal(size=(B, 4))
    if layer == "mha":
        return rng.normal(size=(B, T, E))
    if layer == "mha_kv":  # cross-attention: (query, key, value), key = value = the memory
        memory = rng.normal(size=(B, S, KV))
        return rng.normal(size=(B, T, E)), memory, memory
    if layer == "mha_kdim_vdim":
        return rng.normal(size=(B, T, E)), rng.normal(size=(B, S, KD)), rng.normal(size=(B, S, VD))
    return rng.normal(size=(B, T, D))


def randomised(native: dict, rng: np.random.Generator) -> dict:
    """Every float array of a nested native dict replaced by a random one (positive variances)."""
    out = {}
    for k, v in native.items():
        if isinstance(v, dict):
            out[k] = randomised(v, rng)
        elif np.issubdtype(np.asarray(v).dtype, np.floating):
            r = rng.uniform(-0.8, 0.8, size=np.shape(v))
            out[k] = np.abs(r) + 0.5 if k in ("running_var", "var", "moving_variance") else r
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- torch
def torch_layer(layer: str) -> torch.nn.Module:
    d = torch.float64
    nn = torch.nn
    return {
        "dense": lambda: nn.Linear(5, 4, dtype=d),
        "dense_flatten": lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(int(np.prod(FLAT)), 4, dtype=d)
        ),
        "conv2d": lambda: nn.Conv2d(CONV_IN, CONV_OUT, K, dtype=d),
        "embedding": lambda: nn.Embedding(V, 4, dtype=d),
        "layer_norm": lambda: nn.LayerNorm(4, eps=1e-5, dtype=d),
        "batch_norm": lambda: nn.BatchNorm1d(4, eps=1e-5, dtype=d).eval(),
        "simple_rnn": lambda: nn.RNN(D, H, batch_first=True, dtype=d),
        "lstm": lambda: nn.LSTM(D, H, batch_first=True, dtype=d),
        "lstm_optimized": lambda: nn.LSTM(D, H, batch_first=True, dtype=d),
        "gru": lambda: nn.GRU(D, H, batch_first=True, dtype=d),
        "mha": lambda: nn.MultiheadAttention(E, NH, batch_first=True, dtype=d),
        "mha_kv": lambda: nn.MultiheadAttention(E, NH, kdim=KV, vdim=KV, batch_first=True, dtype=d),
        "mha_kdim_vdim": lambda: nn.MultiheadAttention(
            E, NH, kdim=KD, vdim=VD, batch_first=True, dtype=d
        ),
    }[layer]()


def torch_native(module: torch.nn.Module, layer: str) -> dict:
    sd = module.state_dict()
    if layer == "dense_flatten":  # the Linear's own slice of the Sequential's state_dict
        sd = {k.split(".", 1)[1]: v for k, v in sd.items()}
    return dict(sd)


def torch_load(module: torch.nn.Module, layer: str, native: dict) -> None:
    native = {k: torch.as_tensor(np.asarray(v)) for k, v in native.items()}
    if layer == "dense_flatten":
        native = {f"1.{k}": v for k, v in native.items()}
    module.load_state_dict(native)


def torch_forward(module: torch.nn.Module, layer: str, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        if layer.startswith("mha"):
            q, k, v = map(torch.from_numpy, x if isinstance(x, tuple) else (x, x, x))
            out, _ = module(q, k, v, need_weights=True)  # need_weights: not the fused fast path
            return out.numpy()
        t = torch.from_numpy(x)
        if layer in ("simple_rnn", "lstm", "lstm_optimized", "gru"):
            out, _ = module(t)  # (B, T, H), the hidden state at every step
        else:
            out = module(t)
    return out.numpy()


# ----------------------------------------------------------------------------- Keras
def keras_layer(layer: str):
    L = keras.layers
    made = {
        "dense": lambda: L.Dense(4, dtype=F64),
        "dense_flatten": lambda: keras.Sequential([L.Flatten(dtype=F64), L.Dense(4, dtype=F64)]),
        "conv2d": lambda: L.Conv2D(CONV_OUT, K, padding="valid", dtype=F64),
        "embedding": lambda: L.Embedding(V, 4, dtype=F64),
        "layer_norm": lambda: L.LayerNormalization(epsilon=1e-5, dtype=F64),
        "batch_norm": lambda: L.BatchNormalization(epsilon=1e-5, dtype=F64),
        "simple_rnn": lambda: L.SimpleRNN(H, return_sequences=True, dtype=F64),
        "lstm": lambda: L.LSTM(H, return_sequences=True, dtype=F64),
        "lstm_optimized": lambda: L.LSTM(H, return_sequences=True, dtype=F64),
        "gru": lambda: L.GRU(H, return_sequences=True, dtype=F64),
        "mha": lambda: L.MultiHeadAttention(NH, E // NH, dtype=F64),
        # the key/value kernels take kdim, vdim from the first call's key and value
        "mha_kv": lambda: L.MultiHeadAttention(NH, E // NH, dtype=F64),
        "mha_kdim_vdim": lambda: L.MultiHeadAttention(NH, E // NH, dtype=F64),
    }[layer]()
    keras_forward(made, layer, make_input(layer, np.random.default_rng(0)))  # build the weights
    return made


def keras_native(module, layer: str) -> list:
    if layer == "dense_flatten":
        module = module.layers[-1]
    return module.get_weights()


def keras_load(module, layer: str, native: list) -> None:
    (module.layers[-1] if layer == "dense_flatten" else module).set_weights(native)


def keras_forward(module, layer: str, x: np.ndarray) -> np.ndarray:
    if layer in ("dense_flatten", "conv2d"):
        x = x.transpose(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
    if layer == "mha":
        out = module(x, x)  # query, value (key defaults to value)
    elif layer.startswith("mha"):
        q, k, v = x
        out = module(q, v, key=k)  # query, value, key
    elif layer == "batch_norm":
        out = module(x, training=False)  # inference: the moving statistics
    else:
        out = module(x)
    out = np.asarray(out)
    return out.transpose(0, 3, 1, 2) if layer == "conv2d" else out  # back to (B, C, H, W)


# ----------------------------------------------------------------------------- Flax NNX
class FlaxMHA(nnx.Module):
    def __init__(self, rngs, in_kv_features=None):
        self.mha = nnx.MultiHeadAttention(
            NH,
            E,
            E,
            E,
            in_kv_features=in_kv_features,  # one width for key and value (None: E)
            decode=False,
            dtype=jnp.float64,
            param_dtype=jnp.float64,
            rngs=rngs,
        )

    def __call__(self, x):
        q, k, v = x if isinstance(x, tuple) else (x, x, x)
        # sow_weights=True: Flax's own softmax in float64 (the fused path's is float32)
        out, _ = nnx.capture(self.mha, nnx.Intermediate)(
            q, k, v, deterministic=True, sow_weights=True
        )
        return out


def flax_layer(layer: str):
    r = nnx.Rngs(0)
    kw = dict(dtype=jnp.float64, param_dtype=jnp.float64, rngs=r)
    cells = {
        "simple_rnn": lambda: nnx.SimpleCell(D, H, **kw),
        "lstm": lambda: nnx.LSTMCell(D, H, **kw),
        "lstm_optimized": lambda: nnx.OptimizedLSTMCell(D, H, **kw),
        "gru": lambda: GRUCell(D, H, init=nnx.initializers.uniform(), dtype=jnp.float64, rngs=r),
    }
    if layer in cells:
        return nnx.RNN(cells[layer]())
    if layer == "batch_norm":
        bn = nnx.BatchNorm(4, epsilon=1e-5, use_running_average=True, **kw)
        bn.mean.set_value(bn.mean.get_value().astype(jnp.float64))  # stock stats are float32
        bn.var.set_value(bn.var.get_value().astype(jnp.float64))
        return bn
    return {
        "dense": lambda: nnx.Linear(5, 4, **kw),
        "dense_flatten": lambda: nnx.Linear(int(np.prod(FLAT)), 4, **kw),
        "conv2d": lambda: nnx.Conv(CONV_IN, CONV_OUT, (K, K), padding="VALID", **kw),
        "embedding": lambda: nnx.Embed(V, 4, **kw),
        "layer_norm": lambda: nnx.LayerNorm(4, epsilon=1e-5, use_fast_variance=False, **kw),
        "mha": lambda: FlaxMHA(r),
        "mha_kv": lambda: FlaxMHA(r, in_kv_features=KV),
    }[layer]()


def flax_target(module, layer: str):
    if isinstance(module, nnx.RNN):
        return module.cell
    return module.mha if layer.startswith("mha") else module


def flax_native(module, layer: str) -> dict:
    return flax_porting.pure(nnx.state(flax_target(module, layer), (nnx.Param, nnx.BatchStat)))


def flax_load(module, layer: str, native: dict) -> None:
    flax_porting.update(flax_target(module, layer), native)


def flax_forward(module, layer: str, x: np.ndarray) -> np.ndarray:
    if isinstance(x, tuple):
        return np.asarray(module(tuple(map(jnp.asarray, x))))
    x = jnp.asarray(x)
    if layer == "conv2d":
        return np.asarray(module(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    if layer == "dense_flatten":
        return np.asarray(module(x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1)))
    return np.asarray(module(x))


HARNESS = {
    "torch": (torch_layer, torch_native, torch_load, torch_forward),
    "keras": (keras_layer, keras_native, keras_load, keras_forward),
    "flax": (flax_layer, flax_native, flax_load, flax_forward),
}


def stock_with_random_weights(fw: str, layer: str, seed: int):
    build, native_of, load, _ = HARNESS[fw]
    module = build(layer)
    native = native_of(module, layer)
    if fw == "keras":
        names = ["w"] * len(native)
        if layer == "batch_norm":  # gamma, beta, moving_mean, moving_variance (kept positive)
            names[3] = "moving_variance"
        native = [
            randomised({n: w}, np.random.default_rng(seed + i))[n]
            for i, (n, w) in enumerate(zip(names, native))
        ]
    else:
        if fw == "torch":
            native = {k: np.asarray(v) for k, v in native.items()}
        native = randomised(native, np.random.default_rng(seed))
    load(module, layer, native)
    return module, native


def port(src: str, dst: str, layer: str, native, prefix: str = "blocks.0.x."):
    stem, kw = FUNCTION[layer]
    canonical = getattr(PORTING[src], f"{stem}_to_canonical")(native, prefix=prefix, **kw)
    if dst == "flax" and layer == "lstm_optimized":
        kw = {**kw, "cell": "OptimizedLSTMCell"}
    return canonical, getattr(PORTING[dst], f"{stem}_from_canonical")(
        canonical, prefix=prefix, **kw
    )


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("src,dst", list(permutations(HARNESS, 2)), ids=lambda p: p)
def test_stock_layer_ported_between_frameworks(layer, src, dst):
    """A's stock layer (random weights) -> canonical -> B's stock layer: same outputs, <= 1e-12."""
    x = make_input(layer, np.random.default_rng(1))
    a, native = stock_with_random_weights(src, layer, seed=7)
    expected = HARNESS[src][3](a, layer, x)
    canonical, ported = port(src, dst, layer, native)
    assert all(k.startswith("blocks.0.x.") for k in canonical)
    b = HARNESS[dst][0](layer)
    HARNESS[dst][2](b, layer, ported)
    actual = HARNESS[dst][3](b, layer, x)
    assert actual.shape == expected.shape
    err = float(np.max(np.abs(actual - expected)))
    assert err <= TOL, f"{layer} {src}->{dst}: {err:.3g}"


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("fw", list(HARNESS))
def test_native_canonical_native_is_exact(layer, fw):
    """canonical -> native -> canonical is bit-exact for every framework (the torch bias split and
    the Keras GRU bias rows included), so nothing is lost on the way through a file."""
    stem, kw = FUNCTION[layer]
    rng = np.random.default_rng(3)
    _, native = stock_with_random_weights("torch", layer, seed=5)
    canonical = torch_porting.__dict__[f"{stem}_to_canonical"](native, prefix="p.", **kw)
    canonical = {
        k: rng.uniform(-1, 1, v.shape) if "running_var" not in k else v
        for k, v in canonical.items()
    }
    p = PORTING[fw]
    fkw = {**kw, "cell": "OptimizedLSTMCell"} if (fw, layer) == ("flax", "lstm_optimized") else kw
    back = getattr(p, f"{stem}_to_canonical")(
        getattr(p, f"{stem}_from_canonical")(canonical, prefix="p.", **fkw), prefix="p.", **kw
    )
    assert sorted(back) == sorted(canonical)
    for k in canonical:
        np.testing.assert_array_equal(back[k], canonical[k], err_msg=k)


@pytest.mark.parametrize("src,dst", [("torch", "keras"), ("keras", "torch")], ids=lambda p: p)
def test_mha_with_kdim_ne_vdim_ported(src, dst):
    """Cross-attention with kdim != vdim != E (random non-zero biases): torch's nn.MultiheadAttention
    then has no in_proj_weight but q/k/v_proj_weight (the canonical W_q (E, E), W_k (E, kdim),
    W_v (E, vdim) as they are; in_proj_bias stays packed), Keras's key/value kernels are
    (kdim, NH, HS), (vdim, NH, HS). A -> canonical -> B, B's own forward on the same query, key and
    value as A's, <= 1e-12. Flax cannot hold it (one in_kv_features for key and value)."""
    layer = "mha_kdim_vdim"
    a, native = stock_with_random_weights(src, layer, seed=9)
    x = make_input(layer, np.random.default_rng(2))
    expected = HARNESS[src][3](a, layer, x)
    canonical, ported = port(src, dst, layer, native)
    shapes = {k.removeprefix("blocks.0.x."): v.shape for k, v in canonical.items()}
    assert shapes["k.weight"] == (E, KD) and shapes["v.weight"] == (E, VD), shapes
    assert all(np.abs(canonical[f"blocks.0.x.{n}.bias"]).max() > 0.1 for n in "qkvo")
    b = HARNESS[dst][0](layer)
    HARNESS[dst][2](b, layer, ported)
    err = float(np.max(np.abs(HARNESS[dst][3](b, layer, x) - expected)))
    assert err <= TOL, f"{layer} {src}->{dst}: {err:.3g}"


def test_torch_mha_kdim_layout_round_trip():
    """torch's separate-projection layout: no in_proj_weight when kdim or vdim != E, and
    canonical -> native -> canonical is bit-exact in torch and Keras; kdim = vdim = E gives the
    packed in_proj_weight (3E, E) again."""
    module = torch_layer("mha_kdim_vdim")
    native = {k: np.asarray(v) for k, v in module.state_dict().items()}
    assert "in_proj_weight" not in native
    assert native["k_proj_weight"].shape == (E, KD) and native["v_proj_weight"].shape == (E, VD)
    canonical = torch_porting.mha_to_canonical(native, "a.")
    assert sorted(torch_porting.mha_from_canonical(canonical, "a.")) == sorted(native)
    for p in (torch_porting, keras_porting):
        back = p.mha_to_canonical(p.mha_from_canonical(canonical, "a.", num_heads=NH), "a.")
        for k in canonical:
            np.testing.assert_array_equal(back[k], canonical[k], err_msg=k)
    square = {k: np.asarray(v) for k, v in torch_layer("mha").state_dict().items()}
    packed = torch_porting.mha_from_canonical(torch_porting.mha_to_canonical(square))
    assert packed["in_proj_weight"].shape == (3 * E, E) and "k_proj_weight" not in packed


def test_keras_gru_recurrent_bias_row_folds_into_b_h():
    """The inverse PORTING gave one way only: a trained Keras GRU's recurrent bias row has non-zero
    z and r blocks; b_h = blocks(bias[0] + [bias[1][:2H], 0]), b_hn = bias[1][2H:]. torch's stock
    nn.GRU loaded from it gives the Keras layer's outputs."""
    x = make_input("gru", np.random.default_rng(1))
    k, native = stock_with_random_weights("keras", "gru", seed=11)
    assert np.all(native[2][1, : 2 * H] != 0)  # the z and r blocks of the recurrent row
    canonical = keras_porting.gru_to_canonical(native)
    z_r = native[2][0, : 2 * H] + native[2][1, : 2 * H]  # Keras (z, r) order
    np.testing.assert_array_equal(canonical["b_h"][:H], z_r[H:])  # canonical r first
    np.testing.assert_array_equal(canonical["b_h"][H : 2 * H], z_r[:H])
    t = torch_layer("gru")
    torch_load(t, "gru", torch_porting.gru_from_canonical(canonical))
    err = np.max(np.abs(torch_forward(t, "gru", x) - keras_forward(k, "gru", x)))
    assert err <= TOL


def test_inverse_flatten_permutation_is_the_documented_formula():
    """LeNet-5's fc1 (C, H, W) = (16, 5, 5): the Keras/Flax kernel -> canonical rule is
    kernel.reshape(5, 5, 16, 120).transpose(3, 2, 0, 1).reshape(120, 400), the inverse of
    weight.reshape(120, 16, 5, 5).transpose(2, 3, 1, 0).reshape(400, 120); row (h*5 + w)*16 + c of
    the kernel is column c*25 + h*5 + w of the weight."""
    kernel = np.random.default_rng(0).normal(size=(400, 120))
    formula = kernel.reshape(5, 5, 16, 120).transpose(3, 2, 0, 1).reshape(120, 400)
    for p in (keras_porting, flax_porting):
        native = [kernel] if p is keras_porting else {"kernel": kernel}
        weight = p.dense_to_canonical(native, flatten_from=(16, 5, 5))["weight"]
        np.testing.assert_array_equal(weight, formula)
        back = p.dense_from_canonical({"weight": weight}, flatten_from=(16, 5, 5))
        np.testing.assert_array_equal(back[0] if p is keras_porting else back["kernel"], kernel)
    np.testing.assert_array_equal(formula[:, 25], kernel[1])  # c=1, h=w=0: row 1 is column 25


def test_inverse_conv_transpose():
    """HWIO -> OIHW is transpose(3, 2, 0, 1), the inverse of transpose(2, 3, 1, 0); a plain
    reshape has the right shape and the wrong numbers."""
    kernel = np.random.default_rng(0).normal(size=(5, 4, 3, 2))  # (kh, kw, in_c, out_c)
    weight = keras_porting.conv2d_to_canonical([kernel])["weight"]
    assert weight.shape == (2, 3, 5, 4)
    assert weight[1, 2, 3, 0] == kernel[3, 0, 2, 1]
    np.testing.assert_array_equal(
        flax_porting.conv2d_to_canonical({"kernel": kernel})["weight"], weight
    )
    assert not np.array_equal(weight, kernel.reshape(2, 3, 5, 4))


def test_stock_flax_gru_cell_ports_with_b_hn_zero():
    """The stock nnx.GRUCell has no b_hn: its state ports with b_hn = 0 and torch's nn.GRU then
    matches it; the way back refuses a non-zero b_hn instead of dropping it."""
    x = make_input("gru", np.random.default_rng(1))
    cell = nnx.GRUCell(D, H, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    native = randomised(flax_porting.pure(nnx.state(cell, nnx.Param)), np.random.default_rng(2))
    flax_porting.update(cell, native)
    expected = np.asarray(nnx.RNN(cell)(jnp.asarray(x)))
    canonical = flax_porting.gru_to_canonical(native)
    assert np.all(canonical["b_hn"] == 0) and "b_hn" not in native
    t = torch_layer("gru")
    torch_load(t, "gru", torch_porting.gru_from_canonical(canonical))
    assert np.max(np.abs(torch_forward(t, "gru", x) - expected)) <= TOL
    back = flax_porting.gru_from_canonical(canonical, stock=True)
    np.testing.assert_array_equal(back["dense_h"]["kernel"], native["dense_h"]["kernel"])
    with pytest.raises(ValueError, match="b_hn is not 0"):
        flax_porting.gru_from_canonical({**canonical, "b_hn": np.ones(H)}, stock=True)


def test_keras_gru_reset_after_false_has_its_own_canonical_form():
    """GRU(reset_after=False): n = tanh(W_in x + b_n + W_hn (r * h)). Its canonical form is {W_xh,
    W_hh, b_h} with no b_hn; it round-trips through Keras bit for bit, computes what a NumPy step
    of that formula computes (not the reset_after GRU), and torch and Flax refuse it."""
    x = make_input("gru", np.random.default_rng(1))
    layer = keras.layers.GRU(H, return_sequences=True, reset_after=False, dtype=F64)
    layer(x)
    native = [
        np.random.default_rng(i).uniform(-0.8, 0.8, w.shape)
        for i, w in enumerate(layer.get_weights())
    ]
    layer.set_weights(native)
    c = keras_porting.gru_to_canonical(native, reset_after=False)
    assert sorted(c) == ["W_hh", "W_xh", "b_h"]
    for a, b in zip(keras_porting.gru_from_canonical(c, reset_after=False), native):
        np.testing.assert_array_equal(a, b)
    sig = lambda v: 1 / (1 + np.exp(-v))
    h = np.zeros((B, H))
    outs = []
    for t in range(T):
        xr, xz, xn = np.split(x[:, t] @ c["W_xh"].T + c["b_h"], 3, axis=-1)
        hr, hz, _ = np.split(h @ c["W_hh"].T, 3, axis=-1)
        r, z = sig(xr + hr), sig(xz + hz)
        n = np.tanh(xn + (r * h) @ c["W_hh"][2 * H :].T)
        h = (1 - z) * n + z * h
        outs.append(h)
    assert np.max(np.abs(np.stack(outs, 1) - np.asarray(layer(x)))) <= TOL
    with pytest.raises(KeyError, match="reset_after=False"):
        torch_porting.gru_from_canonical(c)
    with pytest.raises(KeyError, match="reset_after=False"):
        flax_porting.gru_from_canonical(c)
    with pytest.raises(ValueError, match="b_hn"):
        keras_porting.gru_from_canonical({**c, "b_hn": np.zeros(H)}, reset_after=False)


# ----------------------------------------------------------------------------- the Transformer block
def encoder_cases():
    from parity_tests.test_transformer import STOCK_ENCODERS

    return STOCK_ENCODERS


@pytest.mark.parametrize("cfg", encoder_cases(), ids=lambda c: f"{c.norm}-final_norm{c.final_norm}")
def test_canonical_transformer_into_stock_torch_encoder(cfg):
    """The -> direction of PORTING's nn.TransformerEncoder table (test_transformer.py's
    test_stock_torch_encoder_ported_gives_its_logits proves <-): random canonical weights (every
    bias non-zero, LayerNorm gains away from 1) written into a stock nn.TransformerEncoder
    (norm_first False/True, with and without the encoder's final `norm`) with torch_impl/porting.py
    give the scratch Transformer's logits, float64, <= 1e-12 (measured: at most 1.3e-15). self_attn <- attn (mha_from_canonical),
    linear1/linear2 <- ff1/ff2, norm1/norm2 <- ln1/ln2, the encoder's norm <- ln_f."""
    from parity_tests.test_transformer import stock_encoder
    from tasks import parity
    from tasks.registry import load_impl

    rng = np.random.default_rng(4)
    canonical = {
        k: rng.uniform(-0.5, 0.5, shape) + (1.0 if ".ln" in f".{k}" and "weight" in k else 0.0)
        for k, shape in cfg.param_shapes().items()
    }
    embed, encoder, head = stock_encoder(cfg, seed=1)  # the stock structure; every weight replaced
    embed.load_state_dict(torch_porting.embedding_from_canonical(canonical, "embed."))
    for i, layer in enumerate(encoder.layers):
        p = f"blocks.{i}."
        layer.self_attn.load_state_dict(torch_porting.mha_from_canonical(canonical, p + "attn."))
        layer.linear1.load_state_dict(torch_porting.dense_from_canonical(canonical, p + "ff1."))
        layer.linear2.load_state_dict(torch_porting.dense_from_canonical(canonical, p + "ff2."))
        layer.norm1.load_state_dict(torch_porting.layer_norm_from_canonical(canonical, p + "ln1."))
        layer.norm2.load_state_dict(torch_porting.layer_norm_from_canonical(canonical, p + "ln2."))
    assert (encoder.norm is not None) is cfg.has_final_norm
    if encoder.norm is not None:
        encoder.norm.load_state_dict(torch_porting.layer_norm_from_canonical(canonical, "ln_f."))
    head.load_state_dict(torch_porting.dense_from_canonical(canonical, "head."))

    tokens, _ = parity._tokens(np.random.default_rng(1), cfg, 3, pad="right")
    tokens_t = torch.as_tensor(tokens)
    T, E = tokens.shape[1], cfg.d_model
    t, i = np.arange(T)[:, None], np.arange(0, E, 2)  # PE[t, 2i] = sin(t / 10000^(2i/E)), cos
    pe = np.zeros((T, E))
    pe[:, 0::2], pe[:, 1::2] = np.sin(t / 10000 ** (i / E)), np.cos(t / 10000 ** (i / E))
    with torch.no_grad():
        x = embed(tokens_t) * E**0.5 + torch.as_tensor(pe)
        expected = head(encoder(x, src_key_padding_mask=tokens_t == 0)).numpy()

    impl = load_impl("scratch", "transformer")
    model = impl.create_model(cfg, seed=0, dtype="float64")
    impl.load_canonical(model, canonical)
    err = float(np.max(np.abs(model.forward(tokens) - expected)))
    assert err <= TOL, f"{cfg.norm} final_norm={cfg.final_norm}: {err:.3g}"
