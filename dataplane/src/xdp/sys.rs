//! Small netdev helpers over libc. Every call resolves the name in the calling
//! thread's network namespace.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::XdpError;

/// Checks an interface name the way the kernel will (`IFNAMSIZ` includes the NUL).
pub(crate) fn ifname_cstring(name: &str) -> Result<CString, XdpError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(XdpError::BadInterfaceName(name.to_string()));
    }
    CString::new(name).map_err(|_| XdpError::BadInterfaceName(name.to_string()))
}

/// The interface's index.
pub fn ifindex(name: &str) -> Result<u32, XdpError> {
    let c = ifname_cstring(name)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(XdpError::NoSuchInterface {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(idx)
}

fn ifreq_for(name: &str) -> Result<libc::ifreq, XdpError> {
    let c = ifname_cstring(name)?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(c.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn ioctl_sock() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_ioctl(name: &str, req_code: libc::c_ulong) -> Result<libc::ifreq, XdpError> {
    let mut req = ifreq_for(name)?;
    let sock = ioctl_sock().map_err(|e| XdpError::NoSuchInterface {
        name: name.to_string(),
        source: e,
    })?;
    // SAFETY: `req` is a valid ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), req_code as _, &mut req) };
    if rc < 0 {
        return Err(XdpError::NoSuchInterface {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(req)
}

/// The interface MTU (largest L3 packet).
pub fn ifmtu(name: &str) -> Result<u32, XdpError> {
    let req = ifreq_ioctl(name, libc::SIOCGIFMTU)?;
    // SAFETY: SIOCGIFMTU fills `ifru_mtu`.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| XdpError::NoSuchInterface {
        name: name.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidData, "negative MTU"),
    })
}

/// The interface's MAC address.
pub fn ifmac(name: &str) -> Result<[u8; 6], XdpError> {
    let req = ifreq_ioctl(name, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR fills `ifru_hwaddr`.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// Turns a libbpf return code (negative errno, libbpf >= 1.0) into an error.
pub(crate) fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::from_raw_os_error(-rc))
    } else {
        Ok(rc)
    }
}
