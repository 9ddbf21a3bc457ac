"""Weights from elsewhere: the tutorial's model and the official implementation's."""
