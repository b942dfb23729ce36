"""From-scratch NumPy implementations: forward and a hand-written backward for every layer."""
