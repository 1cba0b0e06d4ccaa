"""The device wing, run on the Pi: record, segment, spool, upload, stills, status.

It writes the segment contract, never reads fetch's code.
"""
