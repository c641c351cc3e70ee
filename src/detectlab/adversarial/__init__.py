"""Adversarial-example detection: PGD on MNIST detected by a steganalysis linear-predictor statistic.

Schöttle, Schlögl, Pasquini, Böhme, "Detecting Adversarial Examples - A Lesson from Multimedia Security".
"""
