"""The trace segmenter: network, model files, tiled inference, data and training."""
