//! `coxctl dataplane services|backends|conntrack|stats`.

use std::io::Write;

use anyhow::{Context, Result};
use coxswain_agent_api::{
    CONNTRACK_PATH, COUNTERS_PATH, ConntrackEntry, CounterEntry, NODEPORT_XDP_PATH, SERVICES_PATH,
    ServiceEntry, VerdictEntry,
};
use serde::de::DeserializeOwned;

/// Options of `coxctl dataplane`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to show.
    #[command(subcommand)]
    what: What,
    /// The node agent's endpoint.
    #[arg(
        long,
        global = true,
        env = "COXSWAIN_AGENT",
        default_value = "http://127.0.0.1:10249"
    )]
    agent: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Service frontends with their backends.
    Services,
    /// Every backend of every frontend, with its traffic.
    Backends,
    /// Tracked flows.
    Conntrack {
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Packets and bytes per Service frontend and per interface hook.
    Stats,
}

/// Runs `coxctl dataplane ...`.
pub fn run(args: &Args) -> Result<()> {
    let mut out = tabwriter::TabWriter::new(std::io::stdout()).padding(2);
    match &args.what {
        What::Services => {
            let services: Vec<ServiceEntry> = get(&args.agent, SERVICES_PATH)?;
            if matches!(args.output, Output::Json) {
                return print_json(&services);
            }
            writeln!(out, "SERVICE\tFRONTEND\tSCOPE\tFLAGS\tBACKENDS")?;
            for s in &services {
                let backends: Vec<String> = s
                    .backends
                    .iter()
                    .map(|b| format!("{}:{}", b.addr, b.port))
                    .collect();
                writeln!(
                    out,
                    "{}\t{}:{}/{}\t{}\t{}\t{}",
                    s.service.as_deref().unwrap_or("-"),
                    s.addr,
                    s.port,
                    s.protocol,
                    s.scope,
                    join_or_dash(&s.flags),
                    if backends.is_empty() {
                        "<none: refused>".to_owned()
                    } else {
                        backends.join(",")
                    },
                )?;
            }
        }
        What::Backends => {
            let services: Vec<ServiceEntry> = get(&args.agent, SERVICES_PATH)?;
            if matches!(args.output, Output::Json) {
                return print_json(&services);
            }
            writeln!(out, "SERVICE\tFRONTEND\tBACKEND\tID\tFLAGS\tPACKETS\tBYTES")?;
            for s in &services {
                for b in &s.backends {
                    writeln!(
                        out,
                        "{}\t{}:{}/{}\t{}:{}\t{}\t{}\t{}\t{}",
                        s.service.as_deref().unwrap_or("-"),
                        s.addr,
                        s.port,
                        s.protocol,
                        b.addr,
                        b.port,
                        b.id,
                        join_or_dash(&b.flags),
                        b.traffic.packets,
                        b.traffic.bytes
                    )?;
                }
            }
        }
        What::Conntrack { limit } => {
            let entries: Vec<ConntrackEntry> =
                get(&args.agent, &format!("{CONNTRACK_PATH}?limit={limit}"))?;
            if matches!(args.output, Output::Json) {
                return print_json(&entries);
            }
            writeln!(
                out,
                "DIRECTION\tPROTO\tSOURCE\tDESTINATION\tBACKEND\tSERVICE-ID\tFLAGS\tIDLE"
            )?;
            for e in &entries {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.1}s",
                    e.direction,
                    e.protocol,
                    e.source,
                    e.destination,
                    e.backend,
                    e.service_id,
                    join_or_dash(&e.flags),
                    e.idle_s
                )?;
            }
        }
        What::Stats => {
            let services: Vec<ServiceEntry> = get(&args.agent, SERVICES_PATH)?;
            let counters: Vec<CounterEntry> = get(&args.agent, COUNTERS_PATH)?;
            // Agents without NodePort acceleration support answer 404.
            let xdp: Vec<VerdictEntry> = get(&args.agent, NODEPORT_XDP_PATH).unwrap_or_default();
            if matches!(args.output, Output::Json) {
                return print_json(
                    &serde_json::json!({"services": services, "interfaces": counters, "nodeport_xdp": xdp}),
                );
            }
            writeln!(out, "SERVICE\tFRONTEND\tPACKETS\tBYTES")?;
            for s in &services {
                writeln!(
                    out,
                    "{}\t{}:{}/{}\t{}\t{}",
                    s.service.as_deref().unwrap_or("-"),
                    s.addr,
                    s.port,
                    s.protocol,
                    s.traffic.packets,
                    s.traffic.bytes
                )?;
            }
            if !counters.is_empty() {
                writeln!(out, "\nINTERFACE\tHOOK\tPACKETS\tBYTES")?;
                for c in &counters {
                    let iface = c.iface.clone().unwrap_or_else(|| c.ifindex.to_string());
                    writeln!(out, "{iface}\t{}\t{}\t{}", c.hook, c.packets, c.bytes)?;
                }
            }
            if !xdp.is_empty() {
                writeln!(out, "\nNODEPORT-XDP\tPACKETS\tBYTES")?;
                for v in &xdp {
                    writeln!(out, "{}\t{}\t{}", v.verdict, v.packets, v.bytes)?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn join_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn get<T: DeserializeOwned>(agent: &str, path: &str) -> Result<T> {
    let url = format!("{}{path}", agent.trim_end_matches('/'));
    let mut response = ureq::get(&url)
        .call()
        .with_context(|| format!("failed to reach the node agent at {agent} (is it running? set --agent or COXSWAIN_AGENT)"))?;
    response
        .body_mut()
        .read_json()
        .with_context(|| format!("failed to read the answer of {url}"))
}
