//! Applying the kube-proxy-style baselines (`coxswain_proxy::iptables`,
//! `coxswain_proxy::nftables`) inside a test namespace: `iptables-restore`
//! and `nft -f -` fed on stdin, started from a thread that entered the
//! namespace (so nothing is remounted, and a sync costs what it costs
//! kube-proxy).

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::{NetNs, RoutedTopology};

/// The Service range the baselines' topologies route (10.96.0.0/12, as
/// Kubernetes' default).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// Runs `program args` in `ns` with `input` on its stdin; fails with its
/// stderr.
pub fn run_with_stdin(ns: &NetNs, program: &str, args: &[&str], input: &str) -> Result<()> {
    run_with_stdin_within(ns, program, args, input, None)
}

/// A command killed because it ran past its time limit.
#[derive(Debug)]
pub struct TimedOut {
    /// The command line.
    pub command: String,
    /// Its limit.
    pub limit: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} did not finish within {:?} and was killed",
            self.command, self.limit
        )
    }
}

impl std::error::Error for TimedOut {}

/// [`run_with_stdin`], killing the command (and failing with [`TimedOut`])
/// if it runs longer than `limit`.
pub fn run_with_stdin_within(
    ns: &NetNs,
    program: &str,
    args: &[&str],
    input: &str,
    limit: Option<Duration>,
) -> Result<()> {
    let what = format!("`{program} {}` in netns {}", args.join(" "), ns.name());
    let (status, stderr) = ns.run_in(|| {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to start {what}"))?;
        let mut stdin = child.stdin.take().context("stdin is piped")?;
        let mut stderr = child.stderr.take().context("stderr is piped")?;
        std::thread::scope(|scope| {
            // The child may answer (or fail) before reading all its input.
            scope.spawn(move || stdin.write_all(input.as_bytes()));
            let reader = scope.spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            });
            let status = match limit {
                None => child.wait(),
                Some(limit) => {
                    let deadline = Instant::now() + limit;
                    loop {
                        if let Some(status) = child.try_wait()? {
                            break Ok(status);
                        }
                        if Instant::now() >= deadline {
                            // Our own child, by its handle.
                            let _ = child.kill();
                            let _ = child.wait();
                            let _ = reader.join();
                            return Err(anyhow::Error::new(TimedOut {
                                command: what.clone(),
                                limit,
                            }));
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
            .with_context(|| format!("failed to wait for {what}"))?;
            let stderr = reader.join().unwrap_or_default();
            Ok((status, stderr))
        })
    })?;
    if !status.success() {
        // nft repeats the offending line; a few are enough.
        let head: Vec<&str> = stderr.lines().take(12).collect();
        bail!("{what} failed ({status}): {}", head.join("\n"));
    }
    Ok(())
}

/// `iptables-restore <args>` of `input` in `ns`.
pub fn iptables_restore(ns: &NetNs, args: &[&str], input: &str) -> Result<()> {
    run_with_stdin(ns, "iptables-restore", args, input)
}

/// Ensures `-t table chain rule` exists in `ns` (creating `target` first),
/// as kube-proxy does for the rules leading into its chains when it shares
/// the tables.
pub fn iptables_ensure_jump(
    ns: &NetNs,
    table: &str,
    chain: &str,
    rule: &[&str],
    target: &str,
) -> Result<()> {
    ns.run_in(|| {
        let iptables = |args: &[&str]| {
            Command::new("iptables")
                .args(["-w", "-t", table])
                .args(args)
                .output()
                .context("failed to run iptables")
        };
        // "Chain already exists" is fine.
        let _ = iptables(&["-N", target])?;
        let mut check = vec!["-C", chain];
        check.extend_from_slice(rule);
        if !iptables(&check)?.status.success() {
            let mut insert = vec!["-I", chain, "1"];
            insert.extend_from_slice(rule);
            let out = iptables(&insert)?;
            if !out.status.success() {
                bail!(
                    "failed to insert `{}` in {table} {chain}: {}",
                    rule.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    })
}

/// `nft -f -` of `script` in `ns`.
pub fn nft(ns: &NetNs, script: &str) -> Result<()> {
    run_with_stdin(ns, "nft", &["-f", "-"], script)
}

/// Empties the `nat` and `filter` tables of `ns` (iptables) and deletes
/// table `ip coxswain` (nftables), for a sync from scratch.
pub fn reset_netfilter(ns: &NetNs) -> Result<()> {
    iptables_restore(ns, &[], "*filter\nCOMMIT\n*nat\nCOMMIT\n")?;
    nft(ns, "add table ip coxswain\ndelete table ip coxswain\n")
}

/// Routes [`SERVICE_CIDR`] from the node of `topo` to host `sink`, as a
/// node's default route would lead untranslated Service traffic to its
/// uplink; `sink` does not forward, so such packets end there. With the
/// route, a Service without endpoints is refused by the node's filter rules
/// (the FORWARD hook needs a route), as on a real node.
pub fn route_services_to_sink(topo: &RoutedTopology, sink: usize) -> Result<()> {
    let host = topo
        .hosts
        .get(sink)
        .with_context(|| format!("no host {sink} in the topology"))?;
    topo.node
        .ip(&["route", "add", SERVICE_CIDR, "via", &host.addr.to_string()])
        .map(|_| ())
}
