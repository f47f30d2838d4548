//! Thin socket helpers over libc: what std does not expose (SCTP, `IPV6_V6ONLY`
//! before bind, non-blocking connect with a deadline).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// The transport protocols the lab serves and probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }

    fn socktype(self) -> libc::c_int {
        match self {
            Proto::Udp => libc::SOCK_DGRAM,
            _ => libc::SOCK_STREAM,
        }
    }

    fn ipproto(self) -> libc::c_int {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP,
            Proto::Udp => libc::IPPROTO_UDP,
            Proto::Sctp => libc::IPPROTO_SCTP,
        }
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A new socket, close-on-exec and non-blocking.
pub fn socket(v6: bool, proto: Proto) -> io::Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            proto.socktype() | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            proto.ipproto(),
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether this kernel has SCTP sockets (`CONFIG_IP_SCTP`).
pub fn sctp_available() -> bool {
    socket(false, Proto::Sctp).is_ok()
}

/// Whether this kernel has SCTP sockets, loading the `sctp` module first if they
/// are missing and `modprobe` exists (once per process).
pub fn ensure_sctp() -> bool {
    static TRIED: std::sync::Once = std::sync::Once::new();
    if !sctp_available() {
        TRIED.call_once(|| {
            let _ = std::process::Command::new("modprobe")
                .arg("sctp")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        });
    }
    sctp_available()
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt(2) with a pointer to a local int and its size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A socket address in libc's form.
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain data; zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write(
                        &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in,
                        sin,
                    )
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe {
                    std::ptr::write(
                        &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6,
                        sin6,
                    )
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    pub fn ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const libc::sockaddr_storage as *const libc::sockaddr
    }

    pub fn socklen(&self) -> libc::socklen_t {
        self.len
    }
}

/// A listening (TCP, SCTP) or bound (UDP) socket on the wildcard address of one
/// family (IPv6 sockets are IPv6-only, so both families can share a port).
pub fn listen(v6: bool, proto: Proto, port: u16) -> io::Result<OwnedFd> {
    let fd = socket(v6, proto)?;
    let raw = fd.as_raw_fd();
    setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    if v6 {
        setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1);
    }
    let ip: IpAddr = if v6 {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    };
    let addr = RawAddr::new(SocketAddr::new(ip, port));
    // SAFETY: bind(2) with a valid address buffer and its length.
    cvt(unsafe { libc::bind(raw, addr.ptr(), addr.len) })?;
    if proto != Proto::Udp {
        // SAFETY: listen(2) on our socket.
        cvt(unsafe { libc::listen(raw, 1024) })?;
    }
    Ok(fd)
}

/// Waits until `fd` is ready for `events` or the deadline passes (false then).
pub fn wait(fd: RawFd, events: libc::c_short, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 60_000) as libc::c_int;
        // SAFETY: poll(2) on one pollfd we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc > 0 {
            return Ok(true);
        }
    }
}

/// The pending error of a socket (`SO_ERROR`).
pub fn take_error(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into a local int with its size.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    })?;
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// How a connection attempt ended.
#[derive(Debug)]
pub enum Connect {
    Connected(OwnedFd),
    TimedOut,
}

/// Connects a stream socket (TCP or SCTP) with a deadline.
pub fn connect(proto: Proto, addr: SocketAddr, timeout: Duration) -> io::Result<Connect> {
    let fd = socket(addr.is_ipv6(), proto)?;
    let raw = RawAddr::new(addr);
    // SAFETY: connect(2) with a valid address buffer and its length.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), raw.ptr(), raw.len) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        if !wait(fd.as_raw_fd(), libc::POLLOUT, Instant::now() + timeout)? {
            return Ok(Connect::TimedOut);
        }
        take_error(fd.as_raw_fd())?;
    }
    Ok(Connect::Connected(fd))
}

/// Reads up to `buf.len()` bytes with a deadline; `Ok(None)` on timeout.
pub fn read(fd: RawFd, buf: &mut [u8], deadline: Instant) -> io::Result<Option<usize>> {
    loop {
        if !wait(fd, libc::POLLIN, deadline)? {
            return Ok(None);
        }
        // SAFETY: read(2) into a buffer we own, bounded by its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes all of `data` (small writes on a fresh socket; bounded retries).
pub fn write_all(fd: RawFd, data: &[u8], deadline: Instant) -> io::Result<()> {
    let mut sent = 0;
    while sent < data.len() {
        // SAFETY: write(2) from a slice we own, bounded by its length.
        let n = unsafe {
            libc::write(
                fd,
                data[sent..].as_ptr() as *const libc::c_void,
                data.len() - sent,
            )
        };
        if n >= 0 {
            sent += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            if !wait(fd, libc::POLLOUT, deadline)? {
                return Err(io::ErrorKind::TimedOut.into());
            }
            continue;
        }
        return Err(e);
    }
    Ok(())
}
