"""Experiments on the shipped English–Chichewa corpus: the demo and the paper's reproduction."""
