"""Where a sweep's files live (a folder, NFS, an object store), written whole, and the lock that keeps one driver per sweep."""
