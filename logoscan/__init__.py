"""logoscan: scan a product catalog for logos and write review queues."""
__version__ = "0.1.0"
