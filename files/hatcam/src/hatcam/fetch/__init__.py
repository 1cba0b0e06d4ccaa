"""The operator's wing, run on the laptop: list, download, verify and stitch footage.

It reads the blob store and the segment contract, never the device's code.
"""
