"""Text models: the sentence encoder that ships inside a Python package, and what is built on it."""
