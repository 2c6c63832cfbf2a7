//! The endpoints: one event-driven (tokio) server in the backend namespace,
//! on every address there, answering each request with the address it was
//! reached at. Stops on drop.

use std::{net::SocketAddr, thread::JoinHandle};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::oneshot,
};

use crate::wire::{enter_netns, pin_to, request_end, response};

/// The running server.
#[derive(Debug)]
pub struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `port` on every address of netns `ns` with `workers` threads
    /// (pinned to `cpu`, if given).
    pub fn start(ns: &str, port: u16, workers: usize, cpu: Option<usize>) -> Result<Self> {
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let ns = ns.to_owned();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                let runtime = enter_netns(&ns)
                    .and_then(|()| cpu.map_or(Ok(()), pin_to))
                    .and_then(|()| {
                        // Workers are created by this thread, so in the namespace.
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(workers)
                            .thread_name("bench-server-worker")
                            .enable_all()
                            .build()
                            .context("failed to build the server runtime")
                    });
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = (|| {
                        let socket = TcpSocket::new_v4()?;
                        socket.set_reuseaddr(true)?;
                        socket.bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
                        socket.listen(4096)
                    })();
                    let listener = match listener {
                        Ok(listener) => {
                            let _ = ready_tx.send(Ok(()));
                            listener
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e).context("failed to listen"));
                            return;
                        }
                    };
                    tokio::pin!(stopped);
                    loop {
                        tokio::select! {
                            _ = &mut stopped => return,
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    tokio::spawn(serve(stream));
                                }
                            }
                        }
                    }
                });
            })
            .context("failed to start the server thread")?;
        ready_rx
            .recv()
            .context("server thread ended before listening")??;
        Ok(Server {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

async fn serve(mut stream: TcpStream) {
    let Ok(SocketAddr::V4(local)) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let reply = response(*local.ip());
    let mut buf = [0u8; 1024];
    let mut filled = 0;
    loop {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        while let Some(end) = request_end(&buf[..filled]) {
            if stream.write_all(&reply).await.is_err() {
                return;
            }
            buf.copy_within(end..filled, 0);
            filled -= end;
        }
        if filled == buf.len() {
            return;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
