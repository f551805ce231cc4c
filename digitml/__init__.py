"""digitml: handwritten-digit classification with convolutional networks, tracked in MLflow."""
