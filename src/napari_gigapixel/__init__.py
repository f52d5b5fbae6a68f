"""napari-gigapixel: end-to-end deep learning on gigapixel slides in napari.

Importing this package is cheap: it loads neither TensorFlow nor Qt.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
