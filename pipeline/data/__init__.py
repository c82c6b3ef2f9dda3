"""Datasets (VOC+SBD, generated demo set), incremental tasks and protocols, transforms."""
