"""napari dock widgets: annotate, train, predict, review.

The only code in the package that touches napari layers. Importing these
modules loads Qt and napari but never TensorFlow: engine work runs in a
spawned worker process through :mod:`napari_gigapixel.core.runner`.
"""
