"""The Ray-free core: configuration, models and their sampler, losses, the GAN's steps, metrics.

Imports torch, numpy and the standard library only; tests/test_golden.py fails if anything here
imports ray.
"""
