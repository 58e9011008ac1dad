"""raygan: adversarial text generation (LSTM generator vs LSTM discriminator) on Ray."""

__version__ = "0.1.0"
