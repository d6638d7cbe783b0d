//! Sockets: the io_uring runtime and the epoll fallback that drive the protocol.
