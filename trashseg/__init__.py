"""trashseg: semantic segmentation of trash photos, from COCO annotations to a submission."""

__version__ = "0.1.0"
