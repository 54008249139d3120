"""Data sources and Grain pipelines; bundled data lives in data/files/."""
