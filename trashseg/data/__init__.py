"""Data layer: COCO loading and validation, class tables, masks, splits, statistics, samples."""
