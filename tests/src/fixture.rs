//! A node namespace running the service dataplane between a client and
//! three named backends, for tests with real packets.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};
use coxswain_dataplane::{Dataplane, LoadOptions, locate_object};
use coxswain_ebpf_common::BackendV4;

use crate::{
    netns::{NetNs, PinDir, RoutedTopology},
    require_root,
    servers::NameServer,
};

/// The Service address the tests use.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The backends' port.
pub const TARGET_PORT: u16 = 8080;
/// Bound of every network wait.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// A client, three named backends, and the dataplane on the node.
#[allow(
    missing_debug_implementations,
    reason = "holds the loaded dataplane; tests never print it"
)]
pub struct Fixture {
    /// The loaded, attached dataplane.
    pub dataplane: Dataplane,
    /// Backend servers `b1`..`b3` on hosts 1..=3.
    pub servers: Vec<NameServer>,
    /// Host 0 is the client.
    pub topo: RoutedTopology,
    /// The pin directory.
    pub pins: PinDir,
}

impl Fixture {
    /// Builds the topology on `10.<net>.0.0/16`.
    pub fn new(net: u8) -> Self {
        require_root();
        let topo = RoutedTopology::create(net, 4).expect("create topology");
        let servers = (1..=3)
            .map(|i| {
                NameServer::start(&topo.hosts[i].ns, &format!("b{i}"), TARGET_PORT)
                    .expect("start server")
            })
            .collect();
        let pins = PinDir::new();
        let dataplane = load_and_attach(&topo, &pins).expect("load dataplane");
        Fixture {
            dataplane,
            servers,
            topo,
            pins,
        }
    }

    /// The client namespace.
    pub fn client(&self) -> &NetNs {
        &self.topo.hosts[0].ns
    }

    /// Backend `i` (1..=3) as a map value.
    pub fn backend(&self, i: usize) -> BackendV4 {
        BackendV4 {
            addr: u32::from(self.topo.hosts[i].addr).to_be(),
            port: TARGET_PORT.to_be(),
            proto: 0,
            flags: 0,
        }
    }
}

/// Loads the dataplane and attaches the Service program on every node
/// interface.
pub fn load_and_attach(topo: &RoutedTopology, pins: &PinDir) -> Result<Dataplane> {
    let object = locate_object(None)?;
    topo.node.run_in(|| {
        let mut dataplane = Dataplane::load_file_with(
            &object,
            &LoadOptions {
                pin_dir: pins.path().to_owned(),
            },
        )?;
        for host in &topo.hosts {
            dataplane.attach_service_tc(&host.node_if)?;
        }
        Ok(dataplane)
    })
}

/// Connects from the client namespace; the socket stays in that namespace.
pub fn connect(client: &NetNs, port: u16) -> Result<TcpStream> {
    client.run_in(|| {
        let stream = TcpStream::connect_timeout(&SocketAddr::from((VIP, port)), TIMEOUT)
            .with_context(|| format!("connect to {VIP}:{port}"))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        Ok(stream)
    })
}

/// Sends `msg` on an open connection and returns the backend's name.
pub fn ask(stream: &mut TcpStream, msg: &str) -> Result<String> {
    stream.write_all(msg.as_bytes())?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (name, echoed) = reply.split_once(':').context("reply without a name")?;
    anyhow::ensure!(echoed == msg, "reply {reply:?} does not echo {msg:?}");
    Ok(name.to_owned())
}

/// Connects to the Service port 80 from `port` of the client namespace and
/// asks once; returns the socket and the backend's name.
pub fn connect_from(fx: &Fixture, port: u16) -> Result<(TcpStream, String)> {
    use socket2::{Domain, Socket, Type};
    fx.client().run_in(|| {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
        socket
            .connect_timeout(&SocketAddr::from((VIP, 80)).into(), TIMEOUT)
            .with_context(|| format!("connect to {VIP}:80 from port {port}"))?;
        let mut stream = TcpStream::from(socket);
        stream.set_read_timeout(Some(TIMEOUT))?;
        let name = ask(&mut stream, "hi")?;
        Ok((stream, name))
    })
}

/// Closes with a RST (SO_LINGER 0), so the client port is free to reuse at once.
pub fn abort(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER");
    drop(stream);
}
