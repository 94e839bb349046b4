"""Fine localization: local features matched against the bank's georeferenced feature layer.

Retrieval finds the neighbourhood; this package turns it into metres. A drone frame's ground
patch (rectified with its attitude) or its north-up frame is described with classical local
features (`runtime.features`), matched against the orthophoto's features stored in the bank
(`runtime.bank.feature_layer`), and a robust geometric model (`fit.py`) gives the look-at point
with a covariance.
Python 3.8 compatible, torch-free; needs OpenCV.
"""
