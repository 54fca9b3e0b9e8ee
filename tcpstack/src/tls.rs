//! rustls over a tcpstack connection, from in-memory buffers.
//!
//! rustls is itself sans-IO: it reads ciphertext with `read_tls` and writes it with `write_tls`
//! through `std::io` traits. [`TlsSession::drive`] adapts those to [`Stack::read`] and
//! [`Stack::write`] so records move without an intermediate copy. Call `drive` whenever the
//! connection reports `Readable` or `Writable`, and after `write`; then read plaintext.

use crate::stack::{ConnId, Error as StackError, Stack};
use std::io::{self, Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TCP: {0}")]
    Tcp(StackError),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

/// What `drive` observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The peer's TCP stream ended (clean close_notify or not: see `received_close_notify`).
    pub tcp_eof: bool,
    pub handshaking: bool,
}

/// A tcpstack connection as `std::io::Read` and `Write` (what rustls's `read_tls` and
/// `write_tls` take): `WouldBlock` passes through, other errors are `io::Error::other`.
pub struct TcpIo<'a> {
    pub stack: &'a mut Stack,
    pub id: ConnId,
}

fn to_io(e: StackError) -> io::Error {
    match e {
        StackError::WouldBlock => io::ErrorKind::WouldBlock.into(),
        other => io::Error::other(other),
    }
}

impl Read for TcpIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stack.read(self.id, buf).map_err(to_io)
    }
}

impl Write for TcpIo<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.stack.write(self.id, data).map_err(to_io)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A rustls client or server connection bound to one TCP connection.
pub struct TlsSession {
    pub tls: rustls::Connection,
    pub id: ConnId,
    tcp_eof: bool,
    received_close_notify: bool,
}

impl TlsSession {
    pub fn new(id: ConnId, tls: impl Into<rustls::Connection>) -> Self {
        TlsSession {
            tls: tls.into(),
            id,
            tcp_eof: false,
            received_close_notify: false,
        }
    }

    /// Moves ciphertext both ways: TCP → rustls (processing records), rustls → TCP.
    /// A TLS error is returned after the alert rustls queued for it has been written.
    pub fn drive(&mut self, stack: &mut Stack) -> Result<Progress, TlsError> {
        let mut result = Ok(());
        while !self.tcp_eof && self.tls.wants_read() {
            match self.tls.read_tls(&mut TcpIo { stack, id: self.id }) {
                Ok(0) => self.tcp_eof = true,
                Ok(_) => match self.tls.process_new_packets() {
                    Ok(state) => {
                        if state.peer_has_closed() {
                            self.received_close_notify = true;
                        }
                    }
                    Err(e) => {
                        result = Err(TlsError::Tls(e));
                        break;
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(TlsError::Io(e)),
            }
        }
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut TcpIo { stack, id: self.id }) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if result.is_ok() {
                        result = Err(TlsError::Io(e));
                    }
                    break;
                }
            }
        }
        result?;
        Ok(Progress {
            tcp_eof: self.tcp_eof,
            handshaking: self.tls.is_handshaking(),
        })
    }

    /// Reads decrypted bytes. `Ok(0)` after the peer's close_notify; `WouldBlock` when none.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tls.reader().read(buf)
    }

    /// Queues plaintext (bounded by rustls's buffer limit); call `drive` to send it.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.tls.writer().write(data)
    }

    /// Queues close_notify; `drive` sends it.
    pub fn send_close_notify(&mut self) {
        self.tls.send_close_notify();
    }

    pub fn received_close_notify(&self) -> bool {
        self.received_close_notify
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }
}
