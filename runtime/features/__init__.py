"""Local features of ground images: detection and description at a known scale and orientation.

The lowest layer of geometric verification: the bank's feature layer (`runtime.bank`) is
extracted with it, and the fine stage (`runtime.fine`) describes its queries with it.
Python 3.8 compatible, torch-free; needs OpenCV.
"""
