"""Layer-level porting between stock Flax NNX layers and the canonical layout (docs/PORTING.md).

One pair of pure functions per stock layer, with the same signature shape in torch_impl,
tf_impl and jax_impl:

    <layer>_to_canonical(native, prefix="", **layout) -> dict[str, np.ndarray]
    <layer>_from_canonical(canonical, prefix="", **layout) -> native

Here `native` is the layer's `nnx.State` (`nnx.state(layer, nnx.Param)`; for batch norm
`nnx.state(layer, (nnx.Param, nnx.BatchStat))`), or the nested dict of arrays that
`nnx.to_pure_dict(state)` gives; `from_canonical` returns that nested dict of NumPy arrays, and
`update(layer, native)` below writes it into a layer (`nnx.replace_by_pure_dict` + `nnx.update`).
`prefix` is put in front of every canonical name. Flax keeps dense kernels `(in, out)`, conv
kernels `(kh, kw, in_c, out_c)` on NHWC maps, LSTMCell's gates as eight separate Linears,
attention kernels split by head. Arrays in, arrays out; no model objects.

Gradients: `<layer>_to_canonical(grads, prefix, grads=True)` brings the gradients of a layer's
parameters to canonical. Flax keeps no duplicate parameter and the layouts are linear, so the flag
changes only batch norm (its statistics have no gradient); the recurrent functions accept it for
the signature torch and Keras share (their b_h is a sum of two biases there).

Models: `load_layers` and `layers_to_canonical` (at the end) build every jax_impl model's
`load_canonical`, `export_canonical` and canonical gradients from these functions, so each layout
rule is written once, here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

from tasks.weights import GRAD_LAYERS, PORTED_LAYERS

Native = dict
Canonical = dict[str, np.ndarray]


def pure(native) -> dict:
    """nnx.State or nested mapping -> a nested dict of NumPy arrays."""
    if isinstance(native, nnx.State):
        native = nnx.to_pure_dict(native)
    return {
        k: pure(v) if isinstance(v, (Mapping, nnx.State)) else np.array(v)
        for k, v in dict(native).items()
    }


def update(layer: nnx.Module, native) -> None:
    """Write a native dict (from `*_from_canonical`) into a stock layer, in place."""
    state = nnx.state(layer, (nnx.Param, nnx.BatchStat))
    nnx.replace_by_pure_dict(state, native)
    nnx.update(layer, state)


def _take(canonical: Mapping, prefix: str, names) -> list[np.ndarray]:
    missing = [prefix + n for n in names if prefix + n not in canonical]
    if missing:
        raise KeyError(f"canonical weights lack {', '.join(missing)}")
    return [np.asarray(canonical[prefix + n]) for n in names]


# ----------------------------------------------------------------------------- dense, conv, embedding
def dense_to_canonical(native, prefix: str = "", *, flatten_from=None) -> Canonical:
    """nnx.Linear {"kernel" (in, out), "bias" (out,)} -> {weight (out, in), bias}: weight = kernel.T.
    `flatten_from=(C, H, W)`: a Linear after `x.reshape(B, -1)` of an NHWC map (LeNet-5's fc1):
    weight = kernel.reshape(H, W, C, out).transpose(3, 2, 0, 1).reshape(out, C*H*W)."""
    n = pure(native)
    kernel = n["kernel"]
    if flatten_from is None:
        weight = kernel.T.copy()
    else:
        c, h, w = flatten_from
        out = kernel.shape[1]
        weight = kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w)
    return {prefix + "weight": weight, **({prefix + "bias": n["bias"]} if "bias" in n else {})}


def dense_from_canonical(canonical: Mapping, prefix: str = "", *, flatten_from=None) -> Native:
    """{weight (out, in), bias (out,)} -> nnx.Linear {"kernel" = weight.T (in, out), "bias"}; with
    `flatten_from=(C, H, W)`: kernel = weight.reshape(out, C, H, W).transpose(2, 3, 1, 0)
    .reshape(H*W*C, out)."""
    (weight,) = _take(canonical, prefix, ["weight"])
    if flatten_from is None:
        kernel = weight.T.copy()
    else:
        c, h, w = flatten_from
        out = weight.shape[0]
        kernel = weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)
    bias = {"bias": np.array(canonical[prefix + "bias"])} if prefix + "bias" in canonical else {}
    return {"kernel": kernel, **bias}


def conv2d_to_canonical(native, prefix: str = "") -> Canonical:
    """nnx.Conv {"kernel" (kh, kw, in_c, out_c), "bias" (out_c,)} -> {weight (out_c, in_c, kh, kw),
    bias}: weight = kernel.transpose(3, 2, 0, 1)."""
    n = pure(native)
    out = {prefix + "weight": n["kernel"].transpose(3, 2, 0, 1).copy()}
    return {**out, **({prefix + "bias": n["bias"]} if "bias" in n else {})}


def conv2d_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight (out_c, in_c, kh, kw), bias} -> nnx.Conv {"kernel" = weight.transpose(2, 3, 1, 0),
    "bias"} (build it with padding="VALID": nnx.Conv defaults to "SAME")."""
    (weight,) = _take(canonical, prefix, ["weight"])
    bias = {"bias": np.array(canonical[prefix + "bias"])} if prefix + "bias" in canonical else {}
    return {"kernel": weight.transpose(2, 3, 1, 0).copy(), **bias}


def embedding_to_canonical(native, prefix: str = "") -> Canonical:
    """nnx.Embed {"embedding" (V, E)} -> {weight (V, E)}, as is."""
    return {prefix + "weight": pure(native)["embedding"]}


def embedding_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight (V, E)} -> nnx.Embed {"embedding" (V, E)}, as is."""
    return {"embedding": np.array(_take(canonical, prefix, ["weight"])[0])}


# ----------------------------------------------------------------------------- normalisation
def layer_norm_to_canonical(native, prefix: str = "") -> Canonical:
    """nnx.LayerNorm {"scale" (E,), "bias" (E,)} -> {weight, bias}, as is (pass epsilon=1e-5 and
    use_fast_variance=False to compute what torch computes)."""
    n = pure(native)
    return {prefix + "weight": n["scale"], prefix + "bias": n["bias"]}


def layer_norm_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight, bias (E,)} -> nnx.LayerNorm {"scale", "bias"}, as is."""
    weight, bias = _take(canonical, prefix, ["weight", "bias"])
    return {"scale": weight.copy(), "bias": bias.copy()}


BN = (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var"))


def batch_norm_to_canonical(native, prefix: str = "", *, grads: bool = False) -> Canonical:
    """nnx.BatchNorm {"scale", "bias" (Params), "mean", "var" (BatchStats)} (C,) -> {weight, bias,
    running_mean, running_var}, as is (Flax's var is the biased average; momentum is 1 - torch's;
    the stock statistics are float32 unless replaced: jax_impl/compat.py). `grads=True`: the
    gradients of scale and bias only -> {weight, bias}."""
    n = pure(native)
    return {prefix + c: n[f] for f, c in (BN[:2] if grads else BN)}


def batch_norm_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight, bias, running_mean, running_var} -> nnx.BatchNorm {"scale", "bias", "mean", "var"}."""
    values = _take(canonical, prefix, [c for _, c in BN])
    return {f: v.copy() for (f, _), v in zip(BN, values)}


# ----------------------------------------------------------------------------- recurrent
LSTM_GATES = (("ii", "hi"), ("if_", "hf"), ("ig", "hg"), ("io", "ho"))  # canonical (i, f, g, o)


def simple_rnn_to_canonical(native, prefix: str = "", *, grads: bool = False) -> Canonical:
    """nnx.SimpleCell {"dense_i": {"kernel" (D, H), "bias" (H,)}, "dense_h": {"kernel" (H, H)}} ->
    {W_xh = dense_i.kernel.T, W_hh = dense_h.kernel.T, b_h = dense_i.bias} (the one bias is on the
    input side)."""
    n = pure(native)
    return {
        prefix + "W_xh": n["dense_i"]["kernel"].T.copy(),
        prefix + "W_hh": n["dense_h"]["kernel"].T.copy(),
        prefix + "b_h": n["dense_i"]["bias"],
    }


def simple_rnn_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{W_xh (H, D), W_hh (H, H), b_h (H,)} -> nnx.SimpleCell {"dense_i": {"kernel": W_xh.T,
    "bias": b_h}, "dense_h": {"kernel": W_hh.T}}."""
    w_xh, w_hh, b_h = _take(canonical, prefix, ["W_xh", "W_hh", "b_h"])
    return {
        "dense_i": {"kernel": w_xh.T.copy(), "bias": b_h.copy()},
        "dense_h": {"kernel": w_hh.T.copy()},
    }


def lstm_to_canonical(native, prefix: str = "", *, grads: bool = False) -> Canonical:
    """Two stock cells, told apart by their keys:

    nnx.LSTMCell: {"ii", "if_", "ig", "io": {"kernel" (D, H)}, "hi", "hf", "hg", "ho": {"kernel"
    (H, H), "bias" (H,)}} -> W_xh = concat(ii.kernel.T, if_.kernel.T, ig.kernel.T, io.kernel.T)
    (4H, D), W_hh likewise from hi..ho, b_h = concat(hi.bias, ..., ho.bias) (bias on the hidden side).

    nnx.OptimizedLSTMCell: {"dense_i": {"kernel" (D, 4H)}, "dense_h": {"kernel" (H, 4H), "bias"
    (4H,)}}, gate blocks (i, f, g, o) = canonical -> W_xh = dense_i.kernel.T, W_hh =
    dense_h.kernel.T, b_h = dense_h.bias."""
    n = pure(native)
    if "dense_i" in n:
        return {
            prefix + "W_xh": n["dense_i"]["kernel"].T.copy(),
            prefix + "W_hh": n["dense_h"]["kernel"].T.copy(),
            prefix + "b_h": n["dense_h"]["bias"],
        }
    return {
        prefix + "W_xh": np.concatenate([n[i]["kernel"].T for i, _ in LSTM_GATES]),
        prefix + "W_hh": np.concatenate([n[h]["kernel"].T for _, h in LSTM_GATES]),
        prefix + "b_h": np.concatenate([n[h]["bias"] for _, h in LSTM_GATES]),
    }


def lstm_from_canonical(canonical: Mapping, prefix: str = "", *, cell: str = "LSTMCell") -> Native:
    """{W_xh (4H, D), W_hh (4H, H), b_h (4H,)} -> `cell="LSTMCell"`: row block k to gate k's own
    Linear (kernel = block.T; the bias on the hidden-side Linear); `cell="OptimizedLSTMCell"`:
    {"dense_i": {"kernel": W_xh.T}, "dense_h": {"kernel": W_hh.T, "bias": b_h}}. Flax's carry
    is (c, h) where torch returns (h, c)."""
    w_xh, w_hh, b_h = _take(canonical, prefix, ["W_xh", "W_hh", "b_h"])
    if cell == "OptimizedLSTMCell":
        return {
            "dense_i": {"kernel": w_xh.T.copy()},
            "dense_h": {"kernel": w_hh.T.copy(), "bias": b_h.copy()},
        }
    if cell != "LSTMCell":
        raise ValueError(f"cell must be 'LSTMCell' or 'OptimizedLSTMCell', not {cell!r}")
    h = w_hh.shape[1]
    out = {}
    for k, (i, hh) in enumerate(LSTM_GATES):
        rows = slice(k * h, (k + 1) * h)
        out[i] = {"kernel": w_xh[rows].T.copy()}
        out[hh] = {"kernel": w_hh[rows].T.copy(), "bias": b_h[rows].copy()}
    return out


def gru_to_canonical(
    native, prefix: str = "", *, reset_after: bool = True, grads: bool = False
) -> Canonical:
    """{"dense_i": {"kernel" (D, 3H), "bias" (3H,)}, "dense_h": {"kernel" (H, 3H)}, "b_hn" (H,)}
    (jax_impl.recurrent.GRUCell: the stock nnx.GRUCell's layers plus b_hn) or the stock
    nnx.GRUCell's state (no "b_hn": it has none, so b_hn = 0), gate blocks (r, z, n) = canonical ->
    {W_xh = dense_i.kernel.T, W_hh = dense_h.kernel.T, b_h = dense_i.bias, b_hn}. Flax has no
    reset_after=False cell: `reset_after=False` maps jax_impl.recurrent.GRUCell(reset_after=False),
    written by hand, the same layers without b_hn -> {W_xh, W_hh, b_h}."""
    n = pure(native)
    if not reset_after:
        return {
            prefix + "W_xh": n["dense_i"]["kernel"].T.copy(),
            prefix + "W_hh": n["dense_h"]["kernel"].T.copy(),
            prefix + "b_h": n["dense_i"]["bias"],
        }
    w_hh = n["dense_h"]["kernel"].T.copy()
    b_hn = n["b_hn"] if "b_hn" in n else np.zeros(w_hh.shape[1], w_hh.dtype)
    return {
        prefix + "W_xh": n["dense_i"]["kernel"].T.copy(),
        prefix + "W_hh": w_hh,
        prefix + "b_h": n["dense_i"]["bias"],
        prefix + "b_hn": b_hn,
    }


def gru_from_canonical(
    canonical: Mapping, prefix: str = "", *, reset_after: bool = True, stock: bool = False
) -> Native:
    """{W_xh (3H, D), W_hh (3H, H), b_h (3H,), b_hn (H,)} -> jax_impl.recurrent.GRUCell's dict
    {"dense_i": {"kernel": W_xh.T, "bias": b_h}, "dense_h": {"kernel": W_hh.T}, "b_hn": b_hn}; with
    `stock=True` the stock nnx.GRUCell's dict (no "b_hn"), which raises unless b_hn == 0.
    reset_after=False: {W_xh, W_hh, b_h} (no b_hn) -> GRUCell(reset_after=False)'s dict, no "b_hn"."""
    if not reset_after:
        if prefix + "b_hn" in canonical:
            raise ValueError(f"{prefix}b_hn is the reset_after GRU's; reset_after=False has none")
        w_xh, w_hh, b_h = _take(canonical, prefix, ["W_xh", "W_hh", "b_h"])
        return {
            "dense_i": {"kernel": w_xh.T.copy(), "bias": b_h.copy()},
            "dense_h": {"kernel": w_hh.T.copy()},
        }
    if prefix + "b_hn" not in canonical:
        raise KeyError(
            f"canonical GRU weights lack {prefix}b_hn: a Keras GRU(reset_after=False) has no stock "
            "Flax cell (the reset multiplies h before the matmul); reset_after=False loads it "
            "into jax_impl/recurrent.py's GRUCell(reset_after=False)"
        )
    w_xh, w_hh, b_h, b_hn = _take(canonical, prefix, ["W_xh", "W_hh", "b_h", "b_hn"])
    out = {
        "dense_i": {"kernel": w_xh.T.copy(), "bias": b_h.copy()},
        "dense_h": {"kernel": w_hh.T.copy()},
    }
    if stock:
        if np.any(b_hn != 0):
            raise ValueError(f"{prefix}b_hn is not 0: the stock nnx.GRUCell cannot hold it")
        return out
    return {**out, "b_hn": b_hn.copy()}


# ----------------------------------------------------------------------------- attention
MHA = (("q", "query"), ("k", "key"), ("v", "value"))


def mha_to_canonical(native, prefix: str = "", *, num_heads: int | None = None) -> Canonical:
    """nnx.MultiHeadAttention (qkv_features = out_features = E = NH*HS) {"query", "key", "value":
    {"kernel" (E, NH, HS), "bias" (NH, HS)}, "out": {"kernel" (NH, HS, E), "bias" (E,)}} ->
    {q,k,v}.weight = kernel.reshape(E, E).T, .bias = bias.reshape(E); o.weight =
    out.kernel.reshape(E, E).T, o.bias as is (head n, dim h is canonical row n*HS + h). Call the
    layer with sow_weights=True in float64: its fused path's softmax is float32. Cross-attention
    (in_kv_features = kdim = vdim): key/value kernels (kdim, NH, HS) give (E, kdim), same rule."""
    n = pure(native)
    out = {}
    for c, f in MHA:
        kernel = n[f]["kernel"]
        out[f"{prefix}{c}.weight"] = kernel.reshape(kernel.shape[0], -1).T.copy()
        out[f"{prefix}{c}.bias"] = n[f]["bias"].reshape(-1).copy()
    kernel = n["out"]["kernel"]
    out[prefix + "o.weight"] = kernel.reshape(-1, kernel.shape[-1]).T.copy()
    out[prefix + "o.bias"] = n["out"]["bias"]
    return out


def mha_from_canonical(canonical: Mapping, prefix: str = "", *, num_heads: int) -> Native:
    """{q,k,v,o}.{weight (E, E), bias (E,)} -> nnx.MultiHeadAttention's dict: kernel =
    W.T.reshape(E, NH, HS), bias = b.reshape(NH, HS); out.kernel = W_o.T.reshape(NH, HS, E).
    W_k, W_v (E, kdim) give (kdim, NH, HS): the stock layer holds only kdim = vdim."""
    out = {}
    for c, f in MHA:
        w, b = _take(canonical, prefix, [f"{c}.weight", f"{c}.bias"])
        out[f] = {
            "kernel": w.T.reshape(w.shape[1], num_heads, -1).copy(),
            "bias": b.reshape(num_heads, -1).copy(),
        }
    w, b = _take(canonical, prefix, ["o.weight", "o.bias"])
    out["out"] = {"kernel": w.T.reshape(num_heads, -1, w.shape[0]).copy(), "bias": b.copy()}
    return out


# ----------------------------------------------------------------------------- models
TO = {name: globals()[f"{name}_to_canonical"] for name in PORTED_LAYERS}
FROM = {name: globals()[f"{name}_from_canonical"] for name in PORTED_LAYERS}

Layers = Mapping[str, tuple[str, nnx.Module, dict]]  # prefix -> (layer, module, layout keywords)


def assign(module: nnx.Module, native: Mapping) -> None:
    """Set a module's variables from a native nested dict, each to a JAX array of its value.
    jax.device_put, not jnp.asarray: asarray lifts a NumPy array through `lax.stage`, one small
    XLA program compiled per shape and dtype (46 of them over the MLP's parity cases)."""
    for key, value in native.items():
        target = getattr(module, key)
        if isinstance(value, Mapping):
            assign(target, value)
        else:
            target.set_value(jax.device_put(np.asarray(value)))


def load_layers(layers: Layers, canonical: Mapping) -> None:
    """Write canonical weights into a model's stock layers, each through its layer's function:
    `layers` is {prefix: (layer, module, layout keywords)}, e.g. {"head.": ("dense", model.head,
    {})}."""
    for prefix, (layer, module, layout) in layers.items():
        assign(module, FROM[layer](canonical, prefix, **layout))


def layers_to_canonical(layers: Layers, *, grads: bool = False) -> Canonical:
    """A model's canonical weights from its stock layers, or with `grads=True` the gradients, for a
    model whose parameters hold gradients (`nnx.merge(graphdef, grad_state, ...)`)."""
    out = {}
    for prefix, (layer, module, layout) in layers.items():
        native = nnx.state(module, (nnx.Param, nnx.BatchStat))
        flag = {"grads": grads} if layer in GRAD_LAYERS else {}
        out.update(TO[layer](native, prefix, **layout, **flag))
    return out


@functools.cache
def abstract_model(impl, cfg, seed: int, dtype: str, kwargs: tuple) -> nnx.Module:
    """`impl.create_model(cfg, ...)` built by `nnx.eval_shape`, every variable a
    jax.ShapeDtypeStruct; kept, as tracing create_model costs ~25 ms of Python (a stacked LSTM)
    and the parity cases build each configuration several times. `nnx.clone` gives each caller its
    own Variables to fill."""
    return nnx.eval_shape(lambda: impl.create_model(cfg, seed=seed, dtype=dtype, **dict(kwargs)))


def load_model(impl, cfg, params: Mapping, *, seed: int = 0, dtype: str = "float64", **kwargs):
    """`impl.create_model(cfg, seed=seed, dtype=dtype, **kwargs)` holding the canonical `params`,
    built without drawing the initial weights it would overwrite: Flax's checkpoint idiom (the
    "Model surgery" and "Save and load checkpoints" guides) builds the model abstractly with
    `nnx.eval_shape` (every variable a jax.ShapeDtypeStruct, no computation), then fills it from
    the checkpoint. Here `impl.load_canonical` fills the parameters and batch statistics, and
    `nnx.reseed(model, <stream>=seed)` the random streams the checkpoint has no values for: it
    forks a stream's keys in the graph's order, create_model in construction order, the same keys
    where the two agree (the MLP's dropout layers); nnx.RNN's carry stream (create_model: key 0,
    never read, the carry starts at zeros) gets another. A variable still abstract raises.

    create_model draws each initial tensor through jax.random, an XLA program compiled per shape
    and dtype (the `_uniform` programs: 99 compiles, 15 s of CPU over the parity cases); here none.
    The abstract model is traced once per configuration (abstract_model) and cloned."""
    model = nnx.clone(abstract_model(impl, cfg, seed, dtype, tuple(kwargs.items())))
    impl.load_canonical(model, params)
    streams = {node.key.tag for _, node in nnx.iter_graph(model) if isinstance(node, nnx.RngStream)}
    nnx.reseed(model, **dict.fromkeys(streams, seed))
    abstract = [
        ".".join(map(str, path))
        for path, variable in nnx.to_flat_state(nnx.state(model))
        if isinstance(variable.get_value(), jax.ShapeDtypeStruct)
    ]
    if abstract:
        raise ValueError(f"load_model left {', '.join(abstract)} without a value")
    return model
