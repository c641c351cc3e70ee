"""Macular fluid detection in OCT B-scans: ten ImageNet CNNs fine-tuned with limited data.

Cazañas-Gordón, Parra-Mora, da Silva Cruz, "Evaluating Transfer Learning for Macular Fluid Detection
with Limited Data".
"""
