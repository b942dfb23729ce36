"""Layer-level porting between stock Keras 3 layers and the canonical layout (docs/PORTING.md).

One pair of pure functions per stock layer, with the same signature shape in torch_impl,
tf_impl and jax_impl:

    <layer>_to_canonical(native, prefix="", **layout) -> dict[str, np.ndarray]
    <layer>_from_canonical(canonical, prefix="", **layout) -> native

Here `native` is a list of NumPy arrays in the order of the stock layer's `get_weights()` (and
`set_weights()` takes the list `from_canonical` returns); each docstring gives the order and
shapes. `prefix` is put in front of every canonical name. Keras keeps dense kernels `(in, out)`,
conv kernels `(kh, kw, in_c, out_c)` on NHWC maps, gate order `(z, r, h)` for the GRU, and
attention kernels split by head. No Keras import: arrays in, arrays out.

Gradients: `<layer>_to_canonical(grads, prefix, grads=True)` brings the gradients of a layer's
weights to canonical; the layouts are linear, so only two layers need the flag: the GRU's b_h sums
two bias rows outside the candidate block, and the gradient of that sum is the gradient of the
input row (not the sum of both rows' gradients); a batch norm has gradients for gamma and beta only.

Models: `load_layers` and `layers_to_canonical` (at the end) build every tf_impl model's
`load_canonical`, `export_canonical` and canonical gradients from these functions, so each layout
rule is written once, here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tasks.weights import GRAD_LAYERS, PORTED_LAYERS

Native = list[np.ndarray]
Canonical = dict[str, np.ndarray]


def _take(canonical: Mapping, prefix: str, names) -> list[np.ndarray]:
    missing = [prefix + n for n in names if prefix + n not in canonical]
    if missing:
        raise KeyError(f"canonical weights lack {', '.join(missing)}")
    return [np.asarray(canonical[prefix + n]) for n in names]


def _expect(native: Sequence, count: int, layer: str) -> list[np.ndarray]:
    if len(native) != count:
        raise ValueError(
            f"{layer}: expected {count} arrays in get_weights() order, got {len(native)}"
        )
    return [np.array(a) for a in native]


# ----------------------------------------------------------------------------- dense, conv, embedding
def dense_to_canonical(native: Sequence, prefix: str = "", *, flatten_from=None) -> Canonical:
    """Dense [kernel (in, out), bias (out,)] (or [kernel] with use_bias=False) -> {weight (out, in),
    bias (out,)}: weight = kernel.T.

    `flatten_from=(C, H, W)` for a Dense after `Flatten()` on an NHWC map (LeNet-5's fc1): Keras's
    input row `(h*W + w)*C + c` is canonical column `c*H*W + h*W + w`, so
    weight = kernel.reshape(H, W, C, out).transpose(3, 2, 0, 1).reshape(out, C*H*W)."""
    kernel, *bias = [np.array(a) for a in native]
    if flatten_from is None:
        weight = kernel.T.copy()
    else:
        c, h, w = flatten_from
        out = kernel.shape[1]
        weight = kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w)
    return {prefix + "weight": weight, **({prefix + "bias": bias[0]} if bias else {})}


def dense_from_canonical(canonical: Mapping, prefix: str = "", *, flatten_from=None) -> Native:
    """{weight (out, in), bias (out,)} -> Dense [kernel (in, out), bias (out,)]: kernel = weight.T.

    With `flatten_from=(C, H, W)`: kernel = weight.reshape(out, C, H, W).transpose(2, 3, 1, 0)
    .reshape(H*W*C, out) (rows in NHWC flatten order; docs/PORTING.md works it out)."""
    (weight,) = _take(canonical, prefix, ["weight"])
    if flatten_from is None:
        kernel = weight.T.copy()
    else:
        c, h, w = flatten_from
        out = weight.shape[0]
        kernel = weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)
    bias = [np.array(canonical[prefix + "bias"])] if prefix + "bias" in canonical else []
    return [kernel, *bias]


def conv2d_to_canonical(native: Sequence, prefix: str = "") -> Canonical:
    """Conv2D [kernel (kh, kw, in_c, out_c), bias (out_c,)] -> {weight (out_c, in_c, kh, kw), bias}:
    weight = kernel.transpose(3, 2, 0, 1) (HWIO -> OIHW; the inverse of transpose(2, 3, 1, 0))."""
    kernel, *bias = [np.array(a) for a in native]
    out = {prefix + "weight": kernel.transpose(3, 2, 0, 1).copy()}
    return {**out, **({prefix + "bias": bias[0]} if bias else {})}


def conv2d_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight (out_c, in_c, kh, kw), bias} -> Conv2D [kernel = weight.transpose(2, 3, 1, 0)
    (kh, kw, in_c, out_c), bias]."""
    (weight,) = _take(canonical, prefix, ["weight"])
    bias = [np.array(canonical[prefix + "bias"])] if prefix + "bias" in canonical else []
    return [weight.transpose(2, 3, 1, 0).copy(), *bias]


def embedding_to_canonical(native: Sequence, prefix: str = "") -> Canonical:
    """Embedding [embeddings (V, E)] -> {weight (V, E)}, as is."""
    (table,) = _expect(native, 1, "Embedding")
    return {prefix + "weight": table}


def embedding_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight (V, E)} -> Embedding [embeddings (V, E)], as is."""
    return [np.array(a) for a in _take(canonical, prefix, ["weight"])]


# ----------------------------------------------------------------------------- normalisation
def layer_norm_to_canonical(native: Sequence, prefix: str = "") -> Canonical:
    """LayerNormalization [gamma (E,), beta (E,)] -> {weight, bias}, as is (epsilon: pass 1e-5;
    Keras's default is 1e-3)."""
    gamma, beta = _expect(native, 2, "LayerNormalization")
    return {prefix + "weight": gamma, prefix + "bias": beta}


def layer_norm_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight, bias (E,)} -> LayerNormalization [gamma, beta], as is."""
    return [np.array(a) for a in _take(canonical, prefix, ["weight", "bias"])]


BN = ("weight", "bias", "running_mean", "running_var")


def batch_norm_to_canonical(
    native: Sequence, prefix: str = "", *, grads: bool = False
) -> Canonical:
    """BatchNormalization(axis=-1) [gamma, beta, moving_mean, moving_variance] (C,) ->
    {weight, bias, running_mean, running_var}, as is. Keras's moving variance is the *biased*
    batch variance's average (torch's the unbiased one): no exact conversion exists after training
    (PORTING, "Running variance"); momentum is 1 - torch's, epsilon must be passed (default 1e-3).
    `grads=True`: [gamma, beta] gradients (the statistics are not trained) -> {weight, bias}."""
    count = 2 if grads else 4
    return {prefix + k: v for k, v in zip(BN, _expect(native, count, "BatchNormalization"))}


def batch_norm_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{weight, bias, running_mean, running_var} -> BatchNormalization [gamma, beta, moving_mean,
    moving_variance], as is."""
    return [np.array(a) for a in _take(canonical, prefix, BN)]


# ----------------------------------------------------------------------------- recurrent
GRU_ORDER = [1, 0, 2]  # canonical (r, z, n) <-> Keras (z, r, h): a swap, its own inverse


def gru_blocks(w: np.ndarray) -> np.ndarray:
    """Swap the first two of three gate blocks along axis 0: (3H, ...) canonical <-> Keras."""
    h = w.shape[0] // 3
    return w.reshape(3, h, *w.shape[1:])[GRU_ORDER].reshape(w.shape).copy()


def simple_rnn_to_canonical(
    native: Sequence, prefix: str = "", *, grads: bool = False
) -> Canonical:
    """SimpleRNN [kernel (D, H), recurrent_kernel (H, H), bias (H,)] -> {W_xh = kernel.T (H, D),
    W_hh = recurrent_kernel.T (H, H), b_h = bias (H,)}."""
    kernel, recurrent, bias = _expect(native, 3, "SimpleRNN")
    return {
        prefix + "W_xh": kernel.T.copy(),
        prefix + "W_hh": recurrent.T.copy(),
        prefix + "b_h": bias,
    }


def simple_rnn_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{W_xh (H, D), W_hh (H, H), b_h (H,)} -> SimpleRNN [W_xh.T, W_hh.T, b_h]."""
    w_xh, w_hh, b_h = _take(canonical, prefix, ["W_xh", "W_hh", "b_h"])
    return [w_xh.T.copy(), w_hh.T.copy(), b_h.copy()]


def lstm_to_canonical(native: Sequence, prefix: str = "", *, grads: bool = False) -> Canonical:
    """LSTM [kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,)], gates (i, f, c, o) = canonical
    (i, f, g, o) -> {W_xh = kernel.T (4H, D), W_hh = recurrent_kernel.T (4H, H), b_h = bias}."""
    kernel, recurrent, bias = _expect(native, 3, "LSTM")
    return {
        prefix + "W_xh": kernel.T.copy(),
        prefix + "W_hh": recurrent.T.copy(),
        prefix + "b_h": bias,
    }


def lstm_from_canonical(canonical: Mapping, prefix: str = "") -> Native:
    """{W_xh (4H, D), W_hh (4H, H), b_h (4H,)} -> LSTM [W_xh.T, W_hh.T, b_h] (build the layer
    with unit_forget_bias=False or set_weights overwrites it anyway: it is only an initialiser)."""
    return simple_rnn_from_canonical(canonical, prefix)


def gru_to_canonical(
    native: Sequence, prefix: str = "", *, reset_after: bool = True, grads: bool = False
) -> Canonical:
    """GRU, gates (z, r, h) in Keras, (r, z, n) canonical.

    reset_after=True (Keras's default, torch's and cuDNN's form): [kernel (D, 3H),
    recurrent_kernel (H, 3H), bias (2, 3H) = (input row, recurrent row)] ->
    {W_xh = blocks(kernel.T), W_hh = blocks(recurrent_kernel.T),
     b_h = blocks(bias[0] + [bias[1][:2H], 0]) (3H,), b_hn = bias[1][2H:] (H,)}:
    the recurrent row's z and r blocks only add to the input row's, its h block sits inside
    r * (W_hn h + b_hn). blocks() swaps the first two blocks.

    reset_after=False (Cho et al.'s original, n = tanh(W_in x + b_n + W_hn (r * h))): [kernel
    (D, 3H), recurrent_kernel (H, 3H), bias (3H,)] -> {W_xh, W_hh, b_h} with the same block swap
    and *no* b_hn. This is its own canonical form ("GRU v1"): the reset multiplies h before the
    matmul, so no choice of weights makes it the reset_after GRU (or vice versa); torch's nn.GRU and
    Flax's cells compute only reset_after, and their gru_from_canonical refuse a dict without b_hn.

    grads=True (gradients): b_h = blocks(bias[0]) only, the gradient of the sum of both rows."""
    if reset_after:
        kernel, recurrent, bias = _expect(native, 3, "GRU(reset_after=True)")
        if bias.ndim != 2:
            raise ValueError(f"GRU(reset_after=True) has a (2, 3H) bias, got {bias.shape}")
        h = recurrent.shape[0]
        b = bias[0].copy()
        if not grads:
            b[: 2 * h] += bias[1, : 2 * h]
        extra = {prefix + "b_hn": bias[1, 2 * h :].copy()}
    else:
        kernel, recurrent, b = _expect(native, 3, "GRU(reset_after=False)")
        if b.ndim != 1:
            raise ValueError(f"GRU(reset_after=False) has a (3H,) bias, got {b.shape}")
        extra = {}
    return {
        prefix + "W_xh": gru_blocks(kernel.T),
        prefix + "W_hh": gru_blocks(recurrent.T),
        prefix + "b_h": gru_blocks(b),
        **extra,
    }


def gru_from_canonical(canonical: Mapping, prefix: str = "", *, reset_after: bool = True) -> Native:
    """reset_after=True: {W_xh (3H, D), W_hh (3H, H), b_h (3H,), b_hn (H,)} -> GRU [kernel =
    blocks(W_xh).T, recurrent_kernel = blocks(W_hh).T, bias = stack(blocks(b_h), [0, 0, b_hn])].
    reset_after=False: {W_xh, W_hh, b_h} (no b_hn: the v1 form) -> [.., .., blocks(b_h)]."""
    w_xh, w_hh, b_h = _take(canonical, prefix, ["W_xh", "W_hh", "b_h"])
    kernels = [gru_blocks(w_xh).T.copy(), gru_blocks(w_hh).T.copy()]
    if not reset_after:
        if prefix + "b_hn" in canonical:
            raise ValueError(
                f"{prefix}b_hn is the reset_after GRU's; GRU(reset_after=False) cannot compute it"
            )
        return [*kernels, gru_blocks(b_h)]
    (b_hn,) = _take(canonical, prefix, ["b_hn"])
    recurrent_row = np.concatenate([np.zeros(2 * b_hn.shape[0], b_hn.dtype), b_hn])
    return [*kernels, np.stack([gru_blocks(b_h), recurrent_row])]


# ----------------------------------------------------------------------------- attention
QKV = ("q", "k", "v")


def mha_to_canonical(
    native: Sequence, prefix: str = "", *, num_heads: int | None = None
) -> Canonical:
    """MultiHeadAttention (key_dim = value_dim = HS, E = NH*HS) [query kernel (E, NH, HS), query bias
    (NH, HS), key kernel, key bias, value kernel, value bias, output kernel (NH, HS, E), output bias
    (E,)] -> {q,k,v}.weight = kernel.reshape(E, E).T (out, in), {q,k,v}.bias = bias.reshape(E),
    o.weight = output_kernel.reshape(E, E).T, o.bias as is (head n, dim h is canonical row n*HS + h).
    Cross-attention: key/value kernels (kdim, NH, HS), (vdim, NH, HS) give W_k (E, kdim), W_v
    (E, vdim) by the same rule, kernel.reshape(kdim, E).T."""
    arrays = _expect(native, 8, "MultiHeadAttention")
    out = {}
    for j, name in enumerate(QKV):
        kernel, bias = arrays[2 * j], arrays[2 * j + 1]
        out[f"{prefix}{name}.weight"] = kernel.reshape(kernel.shape[0], -1).T.copy()
        out[f"{prefix}{name}.bias"] = bias.reshape(-1).copy()
    kernel = arrays[6]
    out[prefix + "o.weight"] = kernel.reshape(-1, kernel.shape[-1]).T.copy()
    out[prefix + "o.bias"] = arrays[7]
    return out


def mha_from_canonical(canonical: Mapping, prefix: str = "", *, num_heads: int) -> Native:
    """{q,k,v,o}.{weight (E, E), bias (E,)} -> MultiHeadAttention's 8 arrays: {q,k,v} kernel =
    W.T.reshape(E, NH, HS), bias = b.reshape(NH, HS); output kernel = W_o.T.reshape(NH, HS, E).
    W_k (E, kdim), W_v (E, vdim) give kernels (kdim, NH, HS), (vdim, NH, HS) (cross-attention)."""
    out = []
    for name in QKV:
        w, b = _take(canonical, prefix, [f"{name}.weight", f"{name}.bias"])
        e = w.shape[1]
        out += [w.T.reshape(e, num_heads, -1).copy(), b.reshape(num_heads, -1).copy()]
    w, b = _take(canonical, prefix, ["o.weight", "o.bias"])
    return [*out, w.T.reshape(num_heads, -1, w.shape[0]).copy(), b.copy()]


# ----------------------------------------------------------------------------- models
TO = {name: globals()[f"{name}_to_canonical"] for name in PORTED_LAYERS}
FROM = {name: globals()[f"{name}_from_canonical"] for name in PORTED_LAYERS}

Layers = Mapping[str, tuple[str, object, dict]]  # prefix -> (layer, Keras layer, layout keywords)


def load_layers(layers: Layers, canonical: Mapping) -> None:
    """Write canonical weights into a model's stock Keras layers, each through its layer's function:
    `layers` is {prefix: (layer, keras layer, layout keywords)}, e.g. {"head.": ("dense",
    model.head, {})}; the arrays are assigned in the order of `keras_layer.weights`."""
    for prefix, (layer, keras_layer, layout) in layers.items():
        native = FROM[layer](canonical, prefix, **layout)
        if len(native) != len(keras_layer.weights):
            raise ValueError(
                f"{prefix}: {len(native)} arrays for {len(keras_layer.weights)} weights"
            )
        for variable, value in zip(keras_layer.weights, native):
            variable.assign(value)


def layers_to_canonical(layers: Layers, grads: Mapping | None = None) -> Canonical:
    """A model's canonical weights from its stock Keras layers, or the gradients when `grads` maps
    each prefix to the gradients of its layer's `trainable_variables`, as
    `tape.gradient(loss, {prefix: keras_layer.trainable_variables ...})` returns them."""
    out = {}
    for prefix, (layer, keras_layer, layout) in layers.items():
        if grads is None:
            native, flag = [v.numpy() for v in keras_layer.weights], {}
        else:
            native = [np.asarray(g) for g in grads[prefix]]
            flag = {"grads": True} if layer in GRAD_LAYERS else {}
        out.update(TO[layer](native, prefix, **layout, **flag))
    return out
