"""The operator's web view (``hatcam view``): built on fetch's listing, verification and
stitch; never imports the device wing."""
