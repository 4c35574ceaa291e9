"""(being written) generative gans plugin module."""
