"""Inputs: what a job reads before it runs. Datasets (named, immutable sets of images with a manifest),
their ingest from an upload, and the readiness check a sensor asks. Depends on no other room."""
