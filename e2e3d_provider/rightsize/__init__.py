"""Right-sizing: level-of-detail, compressed and tiled variants of reconstruction results, one module
per kind (mesh, texture, pointcloud) plus the policy that sets their thresholds. No Airflow here."""
