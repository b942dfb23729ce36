"""Test machinery injected into the models: one module per framework, named like its folder
(tasks/replay/torch_impl.py, ...), each with a `ReplayDropout` that create_model accepts as its
`dropout_layer` and a `set_mask(layer, mask)` that makes it replay given keep-masks, so the four
frameworks drop the same units (their own random streams differ). The models themselves build their
framework's stock dropout layer."""
