"""COVID-19 lesion segmentation with a lightweight Mask R-CNN (truncated ResNet18/34 + one FPN level) and
COVID-CT-Mask-Net (the frozen segmentation model's ranked RoI batch -> three-class classifier).

Ter-Sarkisov, "Lightweight Model For The Prediction of COVID-19 Through The Detection And Segmentation of
Lesions in Chest CT Scans".
"""
