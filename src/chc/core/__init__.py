"""Sans-I/O state machines of the physical chain: root, splitter, instance, state."""
