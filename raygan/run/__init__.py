"""Running training: the training loop, checkpoints, Ray Train (train), Ray Tune (tune), the Ray
session, the console and a run's report.
"""
