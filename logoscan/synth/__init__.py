"""Synthetic data made by the project: invented marks, brand icons from simplepycons, product scenes."""
