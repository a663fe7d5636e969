"""Image classification: networks, preprocessing, training, inference and explanations."""
