//! The steering program: our own XDP program (`bpf/steer.bpf.c`), loaded with
//! libbpf and attached through a BPF link, with its maps filled from here.
//!
//! Why a link: a link is owned by its file descriptor, so the program is detached
//! when the last descriptor closes, which the kernel does for us when the process
//! exits or crashes. A netlink attach (what libxdp's `xdp_program__attach` and
//! `ip link set xdp` do) outlives the process and would keep steering our ports
//! into a socket that no longer exists.
//!
//! xsk-rs 0.9 neither loads programs nor re-exports its libxdp-sys bindings, so
//! this module calls libbpf-sys (the same libbpf that libxdp-sys links) directly;
//! the sockets are created by xsk-rs with `XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD` and
//! registered in our XSKMAP with [`Steering::register`].

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

use libbpf_sys as bpf;

use super::sys::{self, check};
use super::{retry_busy, XdpError, XdpMode};

/// The compiled steering program (see `build.rs`).
static STEER_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// Size of the XSKMAP (`MAX_QUEUES` in the C source): the highest queue id + 1.
pub const MAX_QUEUES: u32 = 256;
/// Capacity of the local address map (`MAX_LOCAL_ADDRS`).
pub const MAX_LOCAL_ADDRS: usize = 256;
/// Capacity of the listener map (`MAX_LISTENERS`).
pub const MAX_LISTENERS: usize = 4096;

/// Mirrors `struct steer_cfg`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SteerCfg {
    dedicated: u32,
    eph_lo: u16,
    eph_hi: u16,
}

/// Mirrors `struct listener_key`: address and port in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ListenerKey {
    addr: u32,
    port: u16,
    pad: u16,
}

impl ListenerKey {
    fn new(sa: &SocketAddrV4) -> Self {
        Self {
            addr: u32::from_ne_bytes(sa.ip().octets()),
            port: sa.port().to_be(),
            pad: 0,
        }
    }
}

/// What the gateway owns on an interface, i.e. what is steered to its sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteerConfig {
    /// Steer every frame (a NIC dedicated to the data plane). The other fields
    /// are then ignored.
    pub dedicated: bool,
    /// The gateway's IPv4 addresses on this interface: ARP for them and ICMP and
    /// owned TCP to them are steered.
    pub local_addrs: Vec<Ipv4Addr>,
    /// TCP listeners; address `0.0.0.0` means every local address.
    pub listeners: Vec<SocketAddrV4>,
    /// Source ports of the connections the gateway opens: TCP to a local
    /// address with a destination port in this range is steered.
    pub ephemeral: Option<RangeInclusive<u16>>,
}

/// Counters kept by the program (summed over CPUs). Indices mirror `enum stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteerStats {
    /// Not owned: passed to the kernel.
    pub pass: u64,
    /// Owned TCP sent to a socket.
    pub redirect_tcp: u64,
    /// ARP for a local address sent to a socket.
    pub redirect_arp: u64,
    /// ICMP to a local address sent to a socket.
    pub redirect_icmp: u64,
    /// Frames sent to a socket in dedicated mode.
    pub redirect_dedicated: u64,
    /// Owned TCP (or any frame in dedicated mode) dropped: no socket on the queue.
    pub drop_no_socket: u64,
    /// Owned ARP/ICMP passed to the kernel: no socket on the queue.
    pub pass_no_socket: u64,
    /// Non-first IPv4 fragments to a local address, passed (no port to match).
    pub pass_fragment: u64,
}

const STAT_MAX: u32 = 8;

/// Closes a libbpf object on every path.
struct Obj(*mut bpf::bpf_object);

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: the pointer came from bpf_object__open_mem and is closed once.
        unsafe { bpf::bpf_object__close(self.0) };
    }
}

fn bpf_err(what: &'static str, source: io::Error) -> XdpError {
    XdpError::Bpf { what, source }
}

/// Duplicates a descriptor owned by the libbpf object, so it survives the object.
fn dup_fd(fd: RawFd, what: &'static str) -> Result<OwnedFd, XdpError> {
    if fd < 0 {
        return Err(bpf_err(what, io::Error::from_raw_os_error(-fd)));
    }
    // SAFETY: `fd` is open for as long as the object is, i.e. for this call.
    unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(|e| bpf_err(what, e))
}

fn map_fd(obj: &Obj, name: &CStr, what: &'static str) -> Result<OwnedFd, XdpError> {
    // SAFETY: `obj` is a loaded object and `name` a NUL-terminated string.
    let map = unsafe { bpf::bpf_object__find_map_by_name(obj.0, name.as_ptr()) };
    if map.is_null() {
        return Err(bpf_err(what, io::Error::from(io::ErrorKind::NotFound)));
    }
    // SAFETY: `map` belongs to `obj`.
    dup_fd(unsafe { bpf::bpf_map__fd(map) }, what)
}

fn update<K, V>(fd: &OwnedFd, key: &K, val: &V, what: &'static str) -> Result<(), XdpError> {
    // SAFETY: key and value point to values of the map's key and value sizes
    // (the layouts mirror the C source).
    let rc = unsafe {
        bpf::bpf_map_update_elem(
            fd.as_raw_fd(),
            (key as *const K).cast(),
            (val as *const V).cast(),
            bpf::BPF_ANY as u64,
        )
    };
    check(rc).map(drop).map_err(|e| bpf_err(what, e))
}

fn delete<K>(fd: &OwnedFd, key: &K, what: &'static str) -> Result<(), XdpError> {
    // SAFETY: `key` has the map's key size.
    let rc = unsafe { bpf::bpf_map_delete_elem(fd.as_raw_fd(), (key as *const K).cast()) };
    match check(rc) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(bpf_err(what, e)),
    }
}

/// All keys of a hash map (control path only: allocates).
fn keys<K: Copy>(fd: &OwnedFd, limit: usize, what: &'static str) -> Result<Vec<K>, XdpError> {
    let mut out: Vec<K> = Vec::new();
    // SAFETY: K is plain data mirroring the map key; zeroed is a valid value.
    let mut next: K = unsafe { mem::zeroed() };
    let mut prev: Option<K> = None;
    while out.len() <= limit {
        let prev_ptr = prev
            .as_ref()
            .map_or(ptr::null(), |p| (p as *const K).cast());
        // SAFETY: both pointers point to key-sized values (or null for the first key).
        let rc = unsafe {
            bpf::bpf_map_get_next_key(fd.as_raw_fd(), prev_ptr, (&mut next as *mut K).cast())
        };
        match check(rc) {
            Ok(_) => {
                out.push(next);
                prev = Some(next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(bpf_err(what, e)),
        }
    }
    Ok(out)
}

/// Descriptors of the program's maps (duplicated out of the libbpf object).
#[derive(Debug)]
struct Maps {
    xsks: OwnedFd,
    cfg: OwnedFd,
    local_addrs: OwnedFd,
    listeners: OwnedFd,
    stats: OwnedFd,
}

impl Maps {
    fn configure(&self, config: &SteerConfig) -> Result<(), XdpError> {
        if config.local_addrs.len() > MAX_LOCAL_ADDRS {
            return Err(XdpError::Config(format!(
                "{} local addresses, the steering map holds {MAX_LOCAL_ADDRS}",
                config.local_addrs.len()
            )));
        }
        if config.listeners.len() > MAX_LISTENERS {
            return Err(XdpError::Config(format!(
                "{} listeners, the steering map holds {MAX_LISTENERS}",
                config.listeners.len()
            )));
        }

        let want_addrs: HashSet<u32> = config
            .local_addrs
            .iter()
            .map(|a| u32::from_ne_bytes(a.octets()))
            .collect();
        for a in &want_addrs {
            update(&self.local_addrs, a, &1u8, "add local address")?;
        }
        for a in keys::<u32>(&self.local_addrs, MAX_LOCAL_ADDRS, "list local addresses")? {
            if !want_addrs.contains(&a) {
                delete(&self.local_addrs, &a, "remove local address")?;
            }
        }

        let want_listeners: HashSet<ListenerKey> =
            config.listeners.iter().map(ListenerKey::new).collect();
        for k in &want_listeners {
            update(&self.listeners, k, &1u8, "add listener")?;
        }
        for k in keys::<ListenerKey>(&self.listeners, MAX_LISTENERS, "list listeners")? {
            if !want_listeners.contains(&k) {
                delete(&self.listeners, &k, "remove listener")?;
            }
        }

        // An empty range is lo > hi.
        let (eph_lo, eph_hi) = match &config.ephemeral {
            Some(r) if r.start() <= r.end() => (*r.start(), *r.end()),
            _ => (1, 0),
        };
        let cfg = SteerCfg {
            dedicated: u32::from(config.dedicated),
            eph_lo,
            eph_hi,
        };
        update(&self.cfg, &0u32, &cfg, "write steering config")
    }
}

/// Our XDP program attached to one interface through a BPF link.
///
/// Create it (in the interface's network namespace) before the sockets, share it
/// with the workers in an `Arc`, and let each [`XskDevice`](super::XskDevice)
/// register its socket for its queue. Dropping the last handle closes the link,
/// which detaches the program; so does the process dying.
#[derive(Debug)]
pub struct Steering {
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    prog_id: u32,
    ncpus: usize,
    link: OwnedFd,
    /// The program itself, for `test_run` (the link holds its own reference).
    prog: OwnedFd,
    maps: Maps,
}

impl Steering {
    /// Loads the program, writes `config` into its maps and attaches it to
    /// `ifname` in `mode`. Retries for up to `busy_retry` while the kernel
    /// answers EBUSY (a link of a process that just exited may still be going).
    pub fn attach(
        ifname: &str,
        mode: XdpMode,
        config: &SteerConfig,
        busy_retry: Duration,
    ) -> Result<Self, XdpError> {
        let ifindex = sys::ifindex(ifname)?;

        // SAFETY: STEER_OBJ is a static ELF image; libbpf copies what it keeps.
        let raw = unsafe {
            bpf::bpf_object__open_mem(STEER_OBJ.as_ptr().cast(), STEER_OBJ.len() as _, ptr::null())
        };
        if raw.is_null() {
            return Err(bpf_err(
                "open the steering object",
                io::Error::last_os_error(),
            ));
        }
        let obj = Obj(raw);
        // SAFETY: `obj` is an opened, not yet loaded object.
        check(unsafe { bpf::bpf_object__load(obj.0) })
            .map_err(|e| bpf_err("load the steering program (verifier)", e))?;

        // SAFETY: loaded object, NUL-terminated name.
        let prog_raw =
            unsafe { bpf::bpf_object__find_program_by_name(obj.0, c"xdpmesh_steer".as_ptr()) };
        if prog_raw.is_null() {
            return Err(bpf_err(
                "find program xdpmesh_steer",
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        // SAFETY: `prog_raw` belongs to the loaded object.
        let prog_fd = unsafe { bpf::bpf_program__fd(prog_raw) };
        check(prog_fd).map_err(|e| bpf_err("program fd", e))?;

        // SAFETY: bpf_prog_info is plain data; libbpf fills at most `len` bytes.
        let mut info: bpf::bpf_prog_info = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<bpf::bpf_prog_info>() as u32;
        check(unsafe { bpf::bpf_prog_get_info_by_fd(prog_fd, &mut info, &mut len) })
            .map_err(|e| bpf_err("program info", e))?;

        // SAFETY: plain libbpf query.
        let ncpus = check(unsafe { bpf::libbpf_num_possible_cpus() })
            .map_err(|e| bpf_err("count possible CPUs", e))? as usize;

        let maps = Maps {
            xsks: map_fd(&obj, c"xsks", "map xsks")?,
            cfg: map_fd(&obj, c"cfg", "map cfg")?,
            local_addrs: map_fd(&obj, c"local_addrs", "map local_addrs")?,
            listeners: map_fd(&obj, c"listeners", "map listeners")?,
            stats: map_fd(&obj, c"stats", "map stats")?,
        };
        // Configure before attaching, so the first frame already sees it.
        maps.configure(config)?;

        let link = retry_busy(busy_retry, || {
            // SAFETY: bpf_link_create_opts is plain data; `sz` tells libbpf its size.
            let mut opts: bpf::bpf_link_create_opts = unsafe { mem::zeroed() };
            opts.sz = mem::size_of::<bpf::bpf_link_create_opts>() as _;
            opts.flags = mode.xdp_flags();
            // SAFETY: valid program fd and options; for BPF_XDP the target is the ifindex.
            let fd = unsafe { bpf::bpf_link_create(prog_fd, ifindex as i32, bpf::BPF_XDP, &opts) };
            // SAFETY: on success `fd` is a fresh link descriptor we own.
            check(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .map_err(|source| XdpError::Attach {
            ifname: ifname.to_string(),
            mode,
            source,
        })?;
        let prog = dup_fd(prog_fd, "program fd")?;
        // The link holds the program and the program its maps; `maps` holds the
        // descriptors we write to. The object itself is no longer needed.
        drop(obj);
        Ok(Self {
            ifname: ifname.to_string(),
            ifindex,
            mode,
            prog_id: info.id,
            ncpus: ncpus.max(1),
            link,
            prog,
            maps,
        })
    }

    /// Replaces the steering configuration (local addresses, listeners,
    /// ephemeral range, dedicated mode). Entries are added before stale ones are
    /// removed, so a port kept across the change is never unsteered.
    pub fn configure(&self, config: &SteerConfig) -> Result<(), XdpError> {
        self.maps.configure(config)
    }

    /// Sends this queue's owned traffic to the AF_XDP socket `fd`.
    pub fn register(&self, queue_id: u32, fd: RawFd) -> Result<(), XdpError> {
        if queue_id >= MAX_QUEUES {
            return Err(XdpError::Config(format!(
                "queue {queue_id}: the XSKMAP holds queues 0..{MAX_QUEUES}"
            )));
        }
        update(
            &self.maps.xsks,
            &queue_id,
            &(fd as u32),
            "register socket in XSKMAP",
        )
    }

    /// Removes the queue's socket: from now on its owned TCP is dropped.
    pub fn unregister(&self, queue_id: u32) -> Result<(), XdpError> {
        delete(&self.maps.xsks, &queue_id, "unregister socket from XSKMAP")
    }
    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> Result<SteerStats, XdpError> {
        let mut vals = [0u64; STAT_MAX as usize];
        let mut per_cpu = vec![0u64; self.ncpus];
        for (i, v) in vals.iter_mut().enumerate() {
            let key = i as u32;
            // SAFETY: a per-CPU array lookup writes one 8-byte slot per possible CPU.
            let rc = unsafe {
                bpf::bpf_map_lookup_elem(
                    self.maps.stats.as_raw_fd(),
                    (&key as *const u32).cast(),
                    per_cpu.as_mut_ptr().cast(),
                )
            };
            check(rc).map_err(|e| bpf_err("read steering counters", e))?;
            *v = per_cpu.iter().sum();
        }
        Ok(SteerStats {
            pass: vals[0],
            redirect_tcp: vals[1],
            redirect_arp: vals[2],
            redirect_icmp: vals[3],
            redirect_dedicated: vals[4],
            drop_no_socket: vals[5],
            pass_no_socket: vals[6],
            pass_fragment: vals[7],
        })
    }

    /// Runs the program once on `frame` in the kernel (`BPF_PROG_TEST_RUN`, as if
    /// received on queue 0) and returns its XDP action: 1 drop, 2 pass, 4
    /// redirect. Counts in [`stats`](Self::stats) like real traffic. For testing
    /// the steering rules; frames shorter than 14 bytes are refused (EINVAL).
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        let len = u32::try_from(frame.len())
            .map_err(|_| XdpError::Config("test frame too long".to_string()))?;
        let mut opts = bpf::bpf_test_run_opts {
            sz: mem::size_of::<bpf::bpf_test_run_opts>() as _,
            data_in: frame.as_ptr().cast(),
            data_size_in: len,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: `opts` points at `frame`, which outlives the call; no output buffers.
        check(unsafe { bpf::bpf_prog_test_run_opts(self.prog.as_raw_fd(), &mut opts) })
            .map_err(|e| bpf_err("test run", e))?;
        Ok(opts.retval)
    }

    /// The kernel's id of the attached program (as `ip link` shows it).
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// The interface the program is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index, in the namespace `attach` ran in.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The attach mode.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The link descriptor (closing it detaches the program).
    pub fn link_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.link.as_fd()
    }
}
