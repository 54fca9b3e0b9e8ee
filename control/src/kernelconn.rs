//! Kernel TCP connections made on a gateway's host (the etcd client, `xdpmesh check`) to an
//! address reached through an interface the gateway serves on AF_XDP.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The gateway's own TCP takes the replies to its ephemeral ports (32768–60999) off the
/// NIC with its XDP program, and Linux picks from the same range: a kernel connect from the
/// gateway's host would lose its SYN-ACK to the gateway. So bind a port below that range.
pub const KERNEL_PORTS: std::ops::Range<u16> = 20_000..32_000;

pub fn connect_below_gateway_ports(
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        return Err(std::io::Error::other("IPv6 peers are not supported"));
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos()) as usize
        ^ std::process::id() as usize;
    let span = usize::from(KERNEL_PORTS.end - KERNEL_PORTS.start);
    let mut last = std::io::Error::other("no local port");
    for i in 0..16 {
        let port = KERNEL_PORTS.start + ((seed + i * 7919) % span) as u16;
        // SAFETY: a new socket, owned by the TcpStream from here on (closed on every path);
        // the pointers passed are to locals of the sizes given.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let stream = TcpStream::from_raw_fd(fd);
            // A blocking connect gives up after SO_SNDTIMEO (Linux).
            let tv = libc::timeval {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_usec: timeout.subsec_micros() as libc::suseconds_t,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                sin_zero: [0; 8],
            };
            let local = sa(std::net::Ipv4Addr::UNSPECIFIED, port);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
                last = std::io::Error::last_os_error();
                continue; // taken: another port
            }
            let remote = sa(*v4.ip(), v4.port());
            if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
                let e = std::io::Error::last_os_error();
                return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out")
                } else {
                    e
                });
            }
            return Ok(stream);
        }
    }
    Err(last)
}
