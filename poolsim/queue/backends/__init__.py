"""Task stores behind one protocol: ``base.Backend``; ``open_backend(url)`` picks one."""
