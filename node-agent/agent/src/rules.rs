//! The netfilter proxy modes (`--proxy-mode iptables|nftables`): the same sync engine
//! computes the wanted Services, and instead of writing eBPF maps the agent renders
//! kube-proxy-shaped rules (`coxswain_proxy::iptables`, `coxswain_proxy::nftables`) and
//! applies them with `iptables-restore` or `nft -f`, in the agent's network namespace.
//! They exist so a cluster can be compared with the eBPF dataplane on the same machine.
//!
//! Everything lives in our own chains (`COX-*`) or table (`ip coxswain`); the only rules
//! in built-in chains are the jumps into ours, and [`cleanup`] removes all of it.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use coxswain_proxy::FrontendView;
use coxswain_proxy::iptables::{self, IptablesOptions, IptablesRuleset, Ipv4Cidr, JUMP_RULES};
use coxswain_proxy::nftables::{self, NftOptions};

/// Which rules the agent writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleMode {
    Iptables,
    Nftables,
}

/// Applies full syncs of the wanted state, remembering what the last one created.
#[derive(Debug)]
pub struct RuleSyncer {
    mode: RuleMode,
    /// Which sources are pods (`--cluster-cidr`), as kube-proxy's.
    cluster_cidr: Option<Ipv4Cidr>,
    previous: Option<IptablesRuleset>,
}

impl RuleSyncer {
    pub fn new(mode: RuleMode, cluster_cidr: Option<Ipv4Cidr>) -> RuleSyncer {
        RuleSyncer {
            mode,
            cluster_cidr,
            previous: None,
        }
    }

    /// Replaces our rules with those `frontends` want; returns how many rules were written.
    pub fn sync(&mut self, frontends: &[FrontendView]) -> Result<usize> {
        match self.mode {
            RuleMode::Iptables => {
                let options = IptablesOptions {
                    cluster_cidr: self.cluster_cidr,
                    ..IptablesOptions::default()
                };
                for jump in JUMP_RULES {
                    ensure_jump(jump.table, jump.chain, jump.rule, jump.target)?;
                }
                let ruleset = iptables::render(frontends, &options, self.previous.as_ref());
                run_with_stdin("iptables-restore", ruleset.restore_args(), &ruleset.restore)?;
                let rules = ruleset.rules;
                self.previous = Some(ruleset);
                Ok(rules)
            }
            RuleMode::Nftables => {
                let options = NftOptions {
                    cluster_cidr: self.cluster_cidr,
                    ..NftOptions::default()
                };
                let script = nftables::full(frontends, &options);
                run_with_stdin("nft", &["-f", "-"], &script)?;
                Ok(script.lines().filter(|l| l.starts_with("add rule")).count())
            }
        }
    }
}

/// Feeds `input` to `program args`; fails with its stderr.
fn run_with_stdin(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {program} (is it installed?)"))?;
    let mut stdin = child.stdin.take().context("stdin is piped")?;
    // The child may fail before reading everything: write from a thread.
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().context("wait for the rule loader")?;
    let _ = writer.join();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let head: Vec<&str> = stderr.lines().take(12).collect();
        bail!("{program} {} failed ({}): {}", args.join(" "), out.status, head.join("\n"));
    }
    Ok(())
}

fn iptables(table: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new("iptables")
        .args(["-w", "-t", table])
        .args(args)
        .output()
        .context("failed to run iptables")
}

/// Ensures the jump `chain rule` into our `target` exists (creating `target` first).
fn ensure_jump(table: &str, chain: &str, rule: &[&str], target: &str) -> Result<()> {
    // "Chain already exists" is fine.
    let _ = iptables(table, &["-N", target])?;
    let mut check = vec!["-C", chain];
    check.extend_from_slice(rule);
    if !iptables(table, &check)?.status.success() {
        let mut insert = vec!["-I", chain, "1"];
        insert.extend_from_slice(rule);
        let out = iptables(table, &insert)?;
        if !out.status.success() {
            bail!(
                "failed to insert `{}` in {table} {chain}: {}",
                rule.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Removes every rule the netfilter modes create: the jumps in built-in chains, our
/// `COX-*` chains in `nat` and `filter`, and table `ip coxswain`. Idempotent.
pub fn cleanup() -> Result<()> {
    for jump in JUMP_RULES {
        let mut delete = vec!["-D", jump.chain];
        delete.extend_from_slice(jump.rule);
        // Delete every copy; a missing rule (or chain) ends the loop.
        while iptables(jump.table, &delete)
            .map(|o| o.status.success())
            .unwrap_or(false)
        {}
    }
    for table in ["nat", "filter"] {
        let listed = iptables(table, &["-S"])?;
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        let chains: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| c.starts_with("COX-"))
            .collect();
        // Flush all first: our chains jump to each other.
        for chain in &chains {
            let _ = iptables(table, &["-F", chain])?;
        }
        for chain in &chains {
            let out = iptables(table, &["-X", chain])?;
            if !out.status.success() {
                bail!(
                    "failed to delete chain {chain} in {table}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    run_with_stdin(
        "nft",
        &["-f", "-"],
        &format!("add table ip {0}\ndelete table ip {0}\n", nftables::TABLE),
    )
}
