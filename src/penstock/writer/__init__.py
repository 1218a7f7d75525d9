"""The writer side of the data path: channel selection, serialization into buffers, flushing.

A record an operator emits goes through a ``RecordWriter``: its channel selector
(partitioner) picks the subpartition it goes to, it is serialized once as
``[int32 big-endian length][payload]`` and copied into that subpartition's open buffer.
``key_groups`` holds the key hashing and key-group arithmetic that keyed routing shares
with keyed state; ``partitioners`` holds Flink's channel selectors, each with a per-record
``select_channel`` and a bulk ``split`` for a list of records.
"""
