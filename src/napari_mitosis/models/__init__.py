"""Networks and their checkpoints: the U-Net, the Faster R-CNN detectors, the patch
classifiers, safetensors checkpoints with model cards, and inference-only copies.

Models are plain ``nn.Module`` s from small factories, with no training code inside.
May import `io`.
"""
