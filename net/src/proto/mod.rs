//! The I/O-free wire protocol: frames, handshake, liveness.
