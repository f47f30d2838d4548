//! The server every endpoint runs (`e2e serve`, hidden): every port on TCP (accept,
//! reply a few bytes, close), UDP (echo) and SCTP (one-to-one style, like TCP), on
//! both families' wildcard addresses, in one thread with `poll`.
//!
//! It prints one JSON line when every socket is bound (`{"ready":true,"sctp":B}`),
//! then serves until killed or until `max_lifetime` has passed.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ChildStdout;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sock::{self, Proto};

/// What a TCP or SCTP client reads after connecting.
pub const GREETING: &[u8] = b"palisade-e2e\n";

/// One port to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub proto: Proto,
    pub port: u16,
}

impl Port {
    /// `tcp:80`, `udp:53`, `sctp:9000`.
    pub fn parse(s: &str) -> Option<Port> {
        let (p, n) = s.split_once(':')?;
        Some(Port {
            proto: Proto::parse(p)?,
            port: n.parse().ok().filter(|&n| n != 0)?,
        })
    }

    pub fn arg(&self) -> String {
        format!("{}:{}", self.proto.as_str(), self.port)
    }
}

/// The first line `serve` prints.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Ready {
    pub ready: bool,
    /// SCTP is served: `kernel` sockets, `raw` INIT / INIT ACK, or `none`.
    pub sctp: String,
}

/// What a socket of the server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stream,
    Udp,
    RawSctp { v6: bool },
}

/// Runs the server (the `serve` subcommand). Without kernel SCTP, `sctp_raw`
/// answers SCTP INITs over raw sockets instead (see [`crate::sctp`]).
pub fn serve(ports: &[Port], max_lifetime: Duration, sctp_raw: bool) -> Result<()> {
    let kernel_sctp = sock::sctp_available();
    let mut socks: Vec<(Kind, OwnedFd)> = Vec::new();
    let raw_ports: BTreeSet<u16> = ports
        .iter()
        .filter(|p| p.proto == Proto::Sctp)
        .map(|p| p.port)
        .collect();
    let mut sctp = if kernel_sctp { "kernel" } else { "none" };
    if !kernel_sctp && sctp_raw && !raw_ports.is_empty() {
        for v6 in [false, true] {
            let fd = crate::sctp::raw_socket(v6).context("raw SCTP socket")?;
            socks.push((Kind::RawSctp { v6 }, fd));
        }
        sctp = "raw";
    }
    for p in ports {
        if p.proto == Proto::Sctp && !kernel_sctp {
            continue;
        }
        for v6 in [false, true] {
            let fd = sock::listen(v6, p.proto, p.port).with_context(|| {
                format!(
                    "binding {} port {} ({})",
                    p.proto.as_str(),
                    p.port,
                    if v6 { "IPv6" } else { "IPv4" }
                )
            })?;
            let kind = if p.proto == Proto::Udp {
                Kind::Udp
            } else {
                Kind::Stream
            };
            socks.push((kind, fd));
        }
    }
    let ready = serde_json::to_string(&Ready {
        ready: true,
        sctp: sctp.to_string(),
    })?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ready}")?;
        out.flush()?;
    }
    let start = Instant::now();
    let mut pfds: Vec<libc::pollfd> = socks
        .iter()
        .map(|(_, fd)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    while start.elapsed() < max_lifetime {
        // SAFETY: poll(2) over pollfds built from sockets we own.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("poll: {e}");
        }
        for (pfd, (kind, _)) in pfds.iter_mut().zip(&socks) {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            match kind {
                Kind::Udp => echo(pfd.fd, &mut buf),
                Kind::Stream => greet(pfd.fd),
                Kind::RawSctp { v6 } => crate::sctp::respond(pfd.fd, *v6, &raw_ports, &mut buf),
            }
        }
    }
    Ok(())
}

/// Accepts the pending connections (at most a batch), greets and closes each.
fn greet(listener: libc::c_int) {
    for _ in 0..256 {
        // SAFETY: accept4(2) on our listening socket, no peer address wanted.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        // SAFETY: fd was just returned by accept4 and is owned by nobody else.
        let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = sock::write_all(
            conn.as_raw_fd(),
            GREETING,
            Instant::now() + Duration::from_millis(200),
        );
    }
}

/// Echoes the pending datagrams (at most a batch) to their senders.
fn echo(fd: libc::c_int, buf: &mut [u8]) {
    for _ in 0..256 {
        // SAFETY: sockaddr_storage is plain data; zero is a valid value.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: recvfrom(2) into buffers we own, with their sizes.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut libc::sockaddr_storage as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n < 0 {
            return;
        }
        // SAFETY: sendto(2) back to the address recvfrom filled in.
        unsafe {
            libc::sendto(
                fd,
                buf.as_ptr() as *const libc::c_void,
                n as usize,
                0,
                &from as *const libc::sockaddr_storage as *const libc::sockaddr,
                len,
            );
        }
    }
}

/// Waits for a server's ready line on its stdout.
pub fn wait_ready(stdout: Option<ChildStdout>, timeout: Duration) -> Result<Ready> {
    let mut reader = stdout.map(std::io::BufReader::new);
    match crate::topology::read_line_timeout(&mut reader, timeout)? {
        Some(line) => serde_json::from_str(line.trim())
            .with_context(|| format!("server said {:?}", line.trim())),
        None => bail!("server exited before it was ready"),
    }
}
