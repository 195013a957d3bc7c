"""Durability: copies that outlive a job. Archive, retention, backup, restore and scrub (checking and
repairing published results). Depends on ``results``."""
