//! Packet I/O backends (AF_XDP, in-memory link, TAP), core-pinned workers, the proxy engine and the `xdpmesh` binary. Not built yet: see the dataplane issue.
