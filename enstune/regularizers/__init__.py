"""Regularizers: extra loss terms for members 2..K."""
