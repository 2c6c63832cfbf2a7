//! The benchmark's HTTP-like exchange: a fixed small request, and a reply
//! whose body is the address the backend was reached at (so a client can
//! tell which endpoint answered).

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context, Result};
use nix::{
    sched::{CloneFlags, setns},
    sys::socket::{setsockopt, sockopt},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// What a client sends, once per exchange.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Bound of any single network operation.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The reply of an endpoint reached at `local`.
pub fn response(local: Ipv4Addr) -> Vec<u8> {
    let body = format!("{local}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Moves the calling thread into network namespace `name` (threads it
/// creates afterwards start there too).
pub fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("failed to open {path}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("failed to enter netns {name}"))
}

/// Pins the calling thread (and the threads it creates afterwards) to
/// `cpu`.
pub fn pin_to(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU number out of range")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("failed to pin a thread to CPU {cpu}"))
}

/// A connection from `source` (port chosen at connect time, so that ports
/// are shared across destinations) to `target`.
pub async fn connect(source: Ipv4Addr, target: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    setsockopt(&socket, sockopt::IpBindAddressNoPort, &true).map_err(io::Error::from)?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket.connect(SocketAddr::V4(target)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends [`REQUEST`] and reads one reply; returns its body's length and
/// leaves the body at the start of `buf`.
pub async fn exchange(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    stream.write_all(REQUEST).await?;
    buf.clear();
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((header_end, length)) = parse_head(buf) {
            if buf.len() >= header_end + length {
                buf.drain(..header_end);
                buf.truncate(length);
                return Ok(length);
            }
        } else if buf.len() > 4096 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
        }
    }
}

/// Where the body starts and how long it is, once the head is complete.
fn parse_head(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))?
        .trim()
        .parse()
        .ok()?;
    Some((end, length))
}

/// Finds the end of each complete request in `buf`.
pub fn request_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// A small, fast, seedable generator (xorshift64*): which Service, which
/// endpoint.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_requests_split() {
        let reply = response(Ipv4Addr::new(10, 244, 0, 7));
        let (end, length) = parse_head(&reply).expect("complete head");
        assert_eq!(&reply[end..end + length], b"10.244.0.7\n");
        assert_eq!(parse_head(&reply[..10]), None);
        let two = [REQUEST, REQUEST].concat();
        assert_eq!(request_end(&two), Some(REQUEST.len()));
    }

    #[test]
    fn rng_stays_in_range() {
        let mut rng = Rng::new(7);
        assert!((0..1000).all(|_| rng.below(10) < 10));
    }
}
