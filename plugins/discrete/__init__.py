"""Discrete family: the exact LP (reference), entropic solvers (Sinkhorn, IPOT) and point-cloud / histogram /
colour-transfer tasks scored by their LP gap."""
