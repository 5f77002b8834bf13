"""Protocol buffers: KServe v2 inference (package `inference`) and slimserve's own services."""
