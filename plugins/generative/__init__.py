"""Generative family: tasks whose data a generator must learn (Gaussian mixtures, known-plan targets, digits,
Fashion-MNIST) and OT generators (WGAN with every critic family, OT-GAN, Sinkhorn/IPOT, SPOT) plus a non-OT GAN."""
