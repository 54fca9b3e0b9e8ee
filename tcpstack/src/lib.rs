//! tcpstack
