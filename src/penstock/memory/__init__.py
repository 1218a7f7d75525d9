"""Network memory: segments, the global NetworkBufferPool and local buffer pools."""
