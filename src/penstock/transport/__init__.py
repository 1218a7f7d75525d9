"""The data transport between TaskManagers: Flink's wire protocol over TCP.

``messages`` holds the protocol's messages as frozen values and ``codec`` turns them into
frames and back, without any I/O (bytes in, messages out), so both are tested and fuzzed
without a socket. The server and client that carry frames over connections build on them.
"""
