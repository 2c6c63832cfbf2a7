//! Small TCP and UDP servers that answer with their own name, run on threads
//! inside a test namespace, and stop on drop.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;

use crate::netns::NetNs;

/// A request the servers answer with `<name>:<the client address they see>`.
pub const WHOAMI: &[u8] = b"whoami";

/// A server that prefixes every reply with `<name>:`.
#[derive(Debug)]
pub struct NameServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl NameServer {
    /// Serves TCP (each read echoed back as `<name>:<data>`) and UDP (each
    /// datagram likewise) on `port` of every address in `ns`.
    pub fn start(ns: &NetNs, name: &str, port: u16) -> Result<Self> {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let (tcp, udp) = ns.run_in(|| Ok((TcpListener::bind(addr)?, UdpSocket::bind(addr)?)))?;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let prefix = format!("{name}:");
        let tcp_thread = {
            let (stop, prefix) = (stop.clone(), prefix.clone());
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((stream, _)) => {
                            let (stop, prefix) = (stop.clone(), prefix.clone());
                            conns.push(std::thread::spawn(move || echo(stream, &prefix, &stop)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                for conn in conns {
                    let _ = conn.join();
                }
            })
        };
        let udp_thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                        let mut reply = prefix.clone().into_bytes();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = udp.send_to(&reply, peer);
                    }
                }
            })
        };
        Ok(NameServer {
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }
}

fn echo(mut stream: std::net::TcpStream, prefix: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut reply = prefix.as_bytes().to_vec();
                if &buf[..n] == WHOAMI {
                    // Who the server sees: tells whether the client's
                    // address was kept or source-NATed.
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default();
                    reply.extend_from_slice(peer.as_bytes());
                } else {
                    reply.extend_from_slice(&buf[..n]);
                }
                if stream.write_all(&reply).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
