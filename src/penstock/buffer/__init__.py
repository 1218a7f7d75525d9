"""Buffers over network memory: Buffer, BufferBuilder and BufferConsumer."""
