//! Routing decisions (which links a page run goes to). I/O-free.
