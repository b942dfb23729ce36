"""Layer-level porting between stock torch.nn layers and the canonical layout (docs/PORTING.md).

One pair of pure functions per stock layer, with the same signature shape in torch_impl,
tf_impl and jax_impl:

    <layer>_to_canonical(native, prefix="", **layout) -> dict[str, np.ndarray]
    <layer>_from_canonical(canonical, prefix="", **layout) -> native

Here `native` is the layer's slice of a torch `state_dict`, keyed by the layer's *own* parameter
names (`"weight"`, `"weight_ih_l0"`, `"out_proj.bias"`, ...), values torch tensors or NumPy arrays;
`from_canonical` returns CPU tensors, ready for `layer.load_state_dict(native)`. `prefix` is put
in front of every canonical name (`prefix="head."` gives `"head.weight"`), and `from_canonical`
reads the names with the same prefix. Layout keywords that only Keras/Flax need (`flatten_from`,
`num_heads`, `reset_after`) are accepted and checked here too, so a caller can pass the same
arguments to all three frameworks. No model objects: arrays in, arrays out.

torch's layout *is* the canonical layout except for three things: the recurrent layers keep two
biases where one acts (`bias_ih + bias_hh`), `nn.MultiheadAttention` packs W_q, W_k, W_v into one
`in_proj_weight (3E, E)`, and `nn.BatchNorm*d` has a `num_batches_tracked` counter that is not
canonical.

Gradients: `<layer>_to_canonical(grads, prefix, grads=True)` brings the gradients of a layer's
parameters to canonical. Two layers need the flag: a recurrent layer's b_h is the *sum*
bias_ih + bias_hh, and the gradient of a sum is the gradient of either copy (grad b_h = grad
bias_ih, not the sum of the two); a batch norm's gradients have no running statistics.

Models: `load_layers` and `layers_to_canonical` (at the end) build every torch_impl model's
`load_canonical`, `export_canonical` and canonical gradients from these functions, so each layout
rule is written once, here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from tasks.weights import GRAD_LAYERS, PORTED_LAYERS

Native = dict[str, torch.Tensor]
Canonical = dict[str, np.ndarray]


def _np(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    return np.array(value)


def _t(value) -> torch.Tensor:
    return torch.from_numpy(np.array(value))


def _take(canonical: Mapping, prefix: str, names) -> list[np.ndarray]:
    missing = [prefix + n for n in names if prefix + n not in canonical]
    if missing:
        raise KeyError(f"canonical weights lack {', '.join(missing)}")
    return [np.asarray(canonical[prefix + n]) for n in names]


# ----------------------------------------------------------------------------- dense, conv, embedding
def dense_to_canonical(native: Mapping, prefix: str = "", *, flatten_from=None) -> Canonical:
    """nn.Linear {"weight" (out, in), "bias" (out,)} -> {weight (out, in), bias (out,)}, as is.

    `flatten_from=(C, H, W)` names a Linear after a flatten; torch flattens NCHW like the
    canonical layout, so it changes nothing here (Keras and Flax permute the rows)."""
    out = {prefix + "weight": _np(native["weight"])}
    if "bias" in native:
        out[prefix + "bias"] = _np(native["bias"])
    return out


def dense_from_canonical(canonical: Mapping, prefix: str = "", *, flatten_from=None) -> Native:
    """{weight (out, in), bias (out,)} -> nn.Linear {"weight" (out, in), "bias" (out,)}, as is."""
    out = {"weight": _t(_take(canonical, prefix, ["weight"])[0])}
    if prefix + "bias" in canonical:
        out["bias"] = _t(canonical[prefix + "bias"])
    return out


def conv2d_to_canonical(native: Mapping, prefix: str = "") -> Canonical:
    """nn.Conv2d {"weight" (out_c, in_c, kh, kw), "bias" (out_c,)} -> the same, as is."""
    return dense_to_canonical(native, prefix)


def conv2d_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight (out_c, in_c, kh, kw), bias (out_c,)} -> nn.Conv2d, as is."""
    return dense_from_canonical(canonical, prefix)


def embedding_to_canonical(native: Mapping, prefix: str = "") -> Canonical:
    """nn.Embedding {"weight" (V, E)} -> {weight (V, E)}, as is."""
    return {prefix + "weight": _np(native["weight"])}


def embedding_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight (V, E)} -> nn.Embedding {"weight" (V, E)}, as is."""
    return {"weight": _t(_take(canonical, prefix, ["weight"])[0])}


# ----------------------------------------------------------------------------- normalisation
def layer_norm_to_canonical(native: Mapping, prefix: str = "") -> Canonical:
    """nn.LayerNorm {"weight" (E,), "bias" (E,)} -> {weight, bias}, as is (eps is config, not weight)."""
    return {prefix + k: _np(native[k]) for k in ("weight", "bias")}


def layer_norm_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight (E,), bias (E,)} -> nn.LayerNorm {"weight", "bias"}, as is."""
    return dict(zip(("weight", "bias"), map(_t, _take(canonical, prefix, ["weight", "bias"]))))


BN = ("weight", "bias", "running_mean", "running_var")


def batch_norm_to_canonical(native: Mapping, prefix: str = "", *, grads: bool = False) -> Canonical:
    """nn.BatchNorm1d/2d {"weight", "bias", "running_mean", "running_var" (C,),
    "num_batches_tracked" ()} -> {weight, bias, running_mean, running_var}, as is.

    `num_batches_tracked` is dropped (it only matters for momentum=None, a cumulative average).
    The running variance is torch's *unbiased* one; Keras's and Flax's are biased (PORTING).
    `grads=True`: `native` holds the gradients of the two parameters only -> {weight, bias}."""
    return {prefix + k: _np(native[k]) for k in (BN[:2] if grads else BN)}


def batch_norm_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight, bias, running_mean, running_var (C,)} -> nn.BatchNorm*d's state_dict, with
    `num_batches_tracked = 0` (int64) so that `load_state_dict(strict=True)` accepts it."""
    out = dict(zip(BN, map(_t, _take(canonical, prefix, BN))))
    out["num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


# ----------------------------------------------------------------------------- recurrent
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _direction_to_canonical(
    native: Mapping, prefix: str, cell: str, grads: bool, sfx: str = "_l0"
) -> Canonical:
    """One layer and direction, torch's parameter suffix `sfx` ("_l0", "_l1_reverse", ...)."""
    w_ih, w_hh = _np(native["weight_ih" + sfx]), _np(native["weight_hh" + sfx])
    hidden = w_hh.shape[1]
    b_ih = (
        _np(native["bias_ih" + sfx])
        if "bias_ih" + sfx in native
        else np.zeros(w_ih.shape[0], w_ih.dtype)
    )
    b_hh = _np(native["bias_hh" + sfx]) if "bias_hh" + sfx in native else np.zeros_like(b_ih)
    shared = 2 * hidden if cell == "gru" else b_ih.shape[0]  # bias_hh[:shared] duplicates bias_ih
    b_h = b_ih.copy()
    if not grads:  # the two copies only ever act as their sum ...
        b_h[:shared] += b_hh[:shared]  # ... whose gradient is either copy's, not their sum
    out = {prefix + "W_xh": w_ih, prefix + "W_hh": w_hh, prefix + "b_h": b_h}
    if cell == "gru":
        out[prefix + "b_hn"] = b_hh[shared:].copy()  # inside r * (W_hn h + b_hn): not a duplicate
    return out


def _direction_from_canonical(
    canonical: Mapping, prefix: str, cell: str, sfx: str = "_l0"
) -> Native:
    """One layer and direction, torch's parameter suffix `sfx` ("_l0", "_l1_reverse", ...)."""
    names = ["W_xh", "W_hh", "b_h"] + (["b_hn"] if cell == "gru" else [])
    if cell == "gru" and prefix + "b_hn" not in canonical:
        raise KeyError(
            f"canonical GRU weights lack {prefix}b_hn: torch's nn.GRU computes the reset_after form "
            "(r * (W_hn h + b_hn)); a Keras GRU(reset_after=False) is not nn.GRU: reset_after=False "
            "loads it into torch_impl/recurrent.py's GRUResetBefore"
        )
    w_xh, w_hh, b_h, *b_hn = _take(canonical, prefix, names)
    b_hh = np.zeros_like(b_h)
    if cell == "gru":
        b_hh[2 * w_hh.shape[1] :] = b_hn[0]  # (r, z, n): only the candidate block is b_hn
    return {
        "weight_ih" + sfx: _t(w_xh),
        "weight_hh" + sfx: _t(w_hh),
        "bias_ih" + sfx: _t(b_h),  # the one acting bias on the input side ...
        "bias_hh" + sfx: _t(
            b_hh
        ),  # ... its duplicate 0 (mask its gradient to keep it 0 in training)
    }


def layer_prefix(sfx: str) -> str:
    """torch's parameter suffix -> the canonical layer prefix (RNNConfig.layer_prefixes):
    "_l0" -> "", "_l0_reverse" -> "reverse.", "_l1" -> "l1.", "_l1_reverse" -> "l1.reverse."."""
    layer, reverse = sfx[2:].removesuffix("_reverse"), sfx.endswith("_reverse")
    return ("" if layer == "0" else f"l{layer}.") + ("reverse." if reverse else "")


def _recurrent_to_canonical(native: Mapping, prefix: str, cell: str, grads: bool) -> Canonical:
    """Every layer and direction of a stacked or bidirectional layer, each under its prefix."""
    out = {}
    for key in native:
        if key.startswith("weight_ih_l"):  # weight_ih_l0, weight_ih_l0_reverse, weight_ih_l1, ...
            sfx = key.removeprefix("weight_ih")
            out |= _direction_to_canonical(native, prefix + layer_prefix(sfx), cell, grads, sfx)
    return out


def _recurrent_from_canonical(canonical: Mapping, prefix: str, cell: str) -> Native:
    """Every layer and direction the canonical weights hold (W_xh, reverse.W_xh, l1.W_xh, ...)."""
    out, layer = _direction_from_canonical(canonical, prefix, cell), 1
    if prefix + "reverse.W_xh" in canonical:
        out |= _direction_from_canonical(canonical, prefix + "reverse.", cell, "_l0_reverse")
    while prefix + f"l{layer}.W_xh" in canonical:
        out |= _direction_from_canonical(canonical, prefix + f"l{layer}.", cell, f"_l{layer}")
        if prefix + f"l{layer}.reverse.W_xh" in canonical:
            out |= _direction_from_canonical(
                canonical, prefix + f"l{layer}.reverse.", cell, f"_l{layer}_reverse"
            )
        layer += 1
    return out


def simple_rnn_to_canonical(native: Mapping, prefix: str = "", *, grads: bool = False) -> Canonical:
    """nn.RNN (one layer, tanh) {"weight_ih_l0" (H, D), "weight_hh_l0" (H, H), "bias_ih_l0" (H,),
    "bias_hh_l0" (H,)} -> {W_xh (H, D), W_hh (H, H), b_h = bias_ih + bias_hh (H,)}."""
    return _recurrent_to_canonical(native, prefix, "rnn", grads)


def simple_rnn_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{W_xh, W_hh, b_h} -> nn.RNN: weights as is, bias_ih_l0 = b_h, bias_hh_l0 = 0."""
    return _recurrent_from_canonical(canonical, prefix, "rnn")


def lstm_to_canonical(native: Mapping, prefix: str = "", *, grads: bool = False) -> Canonical:
    """nn.LSTM (one layer) {"weight_ih_l0" (4H, D), "weight_hh_l0" (4H, H), "bias_ih_l0" (4H,),
    "bias_hh_l0" (4H,)}, gate blocks (i, f, g, o) = canonical -> {W_xh, W_hh, b_h = bias_ih + bias_hh}."""
    return _recurrent_to_canonical(native, prefix, "lstm", grads)


def lstm_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{W_xh (4H, D), W_hh (4H, H), b_h (4H,)} -> nn.LSTM: bias_ih_l0 = b_h, bias_hh_l0 = 0."""
    return _recurrent_from_canonical(canonical, prefix, "lstm")


def gru_to_canonical(
    native: Mapping, prefix: str = "", *, reset_after: bool = True, grads: bool = False
) -> Canonical:
    """nn.GRU (one layer) {"weight_ih_l0" (3H, D), "weight_hh_l0" (3H, H), "bias_ih_l0" (3H,),
    "bias_hh_l0" (3H,)}, gate blocks (r, z, n) = canonical -> {W_xh, W_hh,
    b_h = bias_ih + [bias_hh[:2H], 0] (3H,), b_hn = bias_hh[2H:] (H,)}.

    nn.GRU is always the reset_after form. `reset_after=False` maps torch_impl/recurrent.py's
    hand-written GRUResetBefore (nn.GRU's names, Keras's GRU(reset_after=False) step): every block
    of bias_hh duplicates bias_ih, b_h = bias_ih + bias_hh, no b_hn."""
    return _recurrent_to_canonical(native, prefix, "gru" if reset_after else "gru_v1", grads)


def gru_from_canonical(canonical: Mapping, prefix: str = "", *, reset_after: bool = True) -> Native:
    """{W_xh, W_hh, b_h (3H,), b_hn (H,)} -> nn.GRU: bias_ih_l0 = b_h, bias_hh_l0 = [0, 0, b_hn].
    reset_after=False: {W_xh, W_hh, b_h} (no b_hn) -> GRUResetBefore: bias_ih_l0 = b_h, bias_hh_l0 = 0."""
    if not reset_after:
        if prefix + "b_hn" in canonical:
            raise ValueError(f"{prefix}b_hn is the reset_after GRU's; reset_after=False has none")
        return _recurrent_from_canonical(canonical, prefix, "gru_v1")
    return _recurrent_from_canonical(canonical, prefix, "gru")


# ----------------------------------------------------------------------------- attention
QKV = ("q", "k", "v")


def mha_to_canonical(
    native: Mapping, prefix: str = "", *, num_heads: int | None = None
) -> Canonical:
    """nn.MultiheadAttention (batch_first or not) {"in_proj_weight" (3E, E), "in_proj_bias" (3E,),
    "out_proj.weight" (E, E), "out_proj.bias" (E,)} -> {q.weight, k.weight, v.weight, o.weight
    (E, E) (out, in); q.bias, k.bias, v.bias, o.bias (E,)}: rows 0:E, E:2E, 2E:3E of the packed
    projection are W_q, W_k, W_v. With kdim or vdim != E (cross-attention) torch has no
    in_proj_weight but q_proj_weight (E, E), k_proj_weight (E, kdim), v_proj_weight (E, vdim),
    taken as they are (in_proj_bias stays packed). Head n, dimension h is row n*HS + h, so
    `num_heads` is not needed (accepted for the common signature)."""
    b = _np(native["in_proj_bias"])
    e = b.shape[0] // 3
    if "in_proj_weight" in native:
        w = _np(native["in_proj_weight"])
        ws = [w[j * e : (j + 1) * e] for j in range(3)]
    else:
        ws = [_np(native[f"{name}_proj_weight"]) for name in QKV]
    out = {}
    for j, name in enumerate(QKV):
        out[f"{prefix}{name}.weight"] = ws[j].copy()
        out[f"{prefix}{name}.bias"] = b[j * e : (j + 1) * e].copy()
    out[prefix + "o.weight"] = _np(native["out_proj.weight"])
    out[prefix + "o.bias"] = _np(native["out_proj.bias"])
    return out


def mha_from_canonical(
    canonical: Mapping, prefix: str = "", *, num_heads: int | None = None
) -> Native:
    """{q,k,v,o}.{weight, bias (E,)} -> nn.MultiheadAttention: in_proj_weight = concat(W_q, W_k,
    W_v) (3E, E) when W_k and W_v are (E, E); otherwise (kdim or vdim != E, as torch then builds
    it) q_proj_weight = W_q, k_proj_weight = W_k (E, kdim), v_proj_weight = W_v (E, vdim).
    in_proj_bias = concat(b_q, b_k, b_v) either way, out_proj as is."""
    names = [f"{n}.{p}" for n in (*QKV, "o") for p in ("weight", "bias")]
    c = dict(zip(names, _take(canonical, prefix, names)))
    e = c["q.weight"].shape[0]
    if all(c[f"{n}.weight"].shape[1] == e for n in QKV):  # torch's _qkv_same_embed_dim
        weights = {"in_proj_weight": _t(np.concatenate([c[f"{n}.weight"] for n in QKV]))}
    else:
        weights = {f"{n}_proj_weight": _t(c[f"{n}.weight"]) for n in QKV}
    return {
        **weights,
        "in_proj_bias": _t(np.concatenate([c[f"{n}.bias"] for n in QKV])),
        "out_proj.weight": _t(c["o.weight"]),
        "out_proj.bias": _t(c["o.bias"]),
    }


# ----------------------------------------------------------------------------- models
TO = {name: globals()[f"{name}_to_canonical"] for name in PORTED_LAYERS}
FROM = {name: globals()[f"{name}_from_canonical"] for name in PORTED_LAYERS}

Layers = Mapping[str, tuple[str, torch.nn.Module, dict]]


def load_layers(layers: Layers, canonical: Mapping) -> None:
    """Write canonical weights into a model's stock layers, each through its layer's function.

    `layers` is {prefix: (layer, module, layout keywords)}, e.g. {"head.": ("dense", model.head,
    {})}. A batch norm keeps its own `num_batches_tracked` (bookkeeping, not a canonical tensor)."""
    for prefix, (layer, module, layout) in layers.items():
        native = FROM[layer](canonical, prefix, **layout)
        if layer == "batch_norm":
            native["num_batches_tracked"] = module.num_batches_tracked
        module.load_state_dict(native)


def layers_to_canonical(layers: Layers, *, grads: bool = False) -> Canonical:
    """A model's canonical weights from its stock layers ({prefix: (layer, module, layout)}), or
    with `grads=True` the gradients (`.grad`) of their parameters in the canonical layout."""
    out = {}
    for prefix, (layer, module, layout) in layers.items():
        if grads:
            native = {k: p.grad for k, p in module.named_parameters()}
        else:
            native = module.state_dict()
        flag = {"grads": grads} if layer in GRAD_LAYERS else {}
        out.update(TO[layer](native, prefix, **layout, **flag))
    return out
