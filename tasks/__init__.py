"""nn-rosetta's shared hub: datasets, model configs, canonical weights, registry and CLI.

Nothing in this package imports torch, tensorflow or jax at import time: the CLI loads a
framework only when it is asked to run one (see `tasks.registry.load_impl`).
"""
