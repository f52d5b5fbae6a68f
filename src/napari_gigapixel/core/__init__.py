"""Qt-free, napari-free engine of napari-gigapixel.

Everything here is usable from scripts, the command line and tests. Importing
this package (or any of its light modules: slide, synthetic, masks, tiling,
metrics, runner, events) loads neither TensorFlow nor Qt; the modules that need
Keras (unet, training, inference internals) import it inside functions.
"""
