//! Results: the table, the goals, `services.json` and `services.png`.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    Settings,
    topology::{MODES, Mode},
};

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// How it was measured.
    pub settings: Settings,
    /// Where.
    pub machine: Machine,
    /// How long the run took.
    pub duration_s: f64,
    /// Results per Service count.
    pub sizes: Vec<AtSize>,
    /// The goals, judged.
    pub goals: Vec<Goal>,
}

/// The machine and tool versions.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs available.
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `iptables --version`.
    pub iptables: String,
    /// `nft --version`.
    pub nft: String,
}

/// Results at one Service count.
#[derive(Debug, Serialize)]
pub struct AtSize {
    /// Services (10 endpoints each).
    pub services: usize,
    /// `/proc/loadavg` when this size started: other work on the machine
    /// (the benchmark itself keeps about 2 busy) makes figures noisier.
    pub load_average: String,
    /// Per mode name.
    pub modes: BTreeMap<String, ModeResult>,
}

/// One mode at one Service count.
#[derive(Debug, Default, Serialize)]
pub struct ModeResult {
    /// Why the mode was not measured here.
    pub skipped: Option<String>,
    /// New connections per second.
    pub rate: Option<RateResult>,
    /// Request latency on kept-alive connections.
    pub latency: Option<LatencyResult>,
    /// Programming every Service from scratch, in milliseconds.
    pub program_ms: Option<f64>,
    /// Map operations (eBPF), rules (iptables) or script lines (nftables)
    /// of that programming.
    pub program_size: Option<usize>,
    /// One endpoint change until the packet path follows.
    pub change: Option<ChangeResult>,
}

/// Connection-rate rounds.
#[derive(Debug, Default, Serialize)]
pub struct RateResult {
    /// Connections per second of each round.
    pub rounds: Vec<f64>,
    /// Their median.
    pub median: f64,
    /// Connections completed over all rounds.
    pub connections: u64,
    /// Connections failed over all rounds.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

impl RateResult {
    /// Computes the median.
    pub fn finish(&mut self) {
        self.median = median(&self.rounds);
    }
}

/// Request latencies, pooled over rounds.
#[derive(Debug, Default, Serialize)]
pub struct LatencyResult {
    /// Median, µs.
    pub p50_us: u32,
    /// 99th percentile, µs.
    pub p99_us: u32,
    /// Requests measured.
    pub samples: usize,
    /// Failed requests or connections.
    pub errors: u64,
    #[serde(skip)]
    all: Vec<u32>,
}

impl LatencyResult {
    /// Adds one round's samples.
    pub fn add_round(&mut self, samples: Vec<u32>, errors: u64) {
        self.all.extend(samples);
        self.errors += errors;
        self.all.sort_unstable();
        self.samples = self.all.len();
        self.p50_us = percentile(&self.all, 0.50).unwrap_or(0);
        self.p99_us = percentile(&self.all, 0.99).unwrap_or(0);
    }
}

/// Endpoint changes.
#[derive(Debug, Default, Serialize)]
pub struct ChangeResult {
    /// From the start of the sync to the first reply from the new endpoint,
    /// ms, per change.
    pub total_ms: Vec<f64>,
    /// The sync alone (engine, render, command), ms.
    pub sync_ms: Vec<f64>,
    /// Connections the probe needed.
    pub probes: Vec<u32>,
    /// Median of `total_ms`.
    pub p50_ms: f64,
    /// 99th percentile of `total_ms` (the largest below 100 changes).
    pub p99_ms: f64,
    /// Median of `sync_ms`.
    pub sync_p50_ms: f64,
}

impl ChangeResult {
    /// Records one change.
    pub fn add(&mut self, total: Duration, sync: Duration, probes: u32) {
        self.total_ms.push(total.as_secs_f64() * 1e3);
        self.sync_ms.push(sync.as_secs_f64() * 1e3);
        self.probes.push(probes);
    }

    /// Computes the percentiles.
    pub fn finish(&mut self) {
        let mut total = self.total_ms.clone();
        total.sort_by(f64::total_cmp);
        let mut sync = self.sync_ms.clone();
        sync.sort_by(f64::total_cmp);
        self.p50_ms = percentile(&total, 0.50).unwrap_or(f64::NAN);
        self.p99_ms = percentile(&total, 0.99).unwrap_or(f64::NAN);
        self.sync_p50_ms = percentile(&sync, 0.50).unwrap_or(f64::NAN);
    }
}

/// A goal and whether this run met it.
#[derive(Debug, Serialize)]
pub struct Goal {
    /// What is wanted.
    pub goal: String,
    /// The measured figure, in the goal's terms.
    pub measured: Option<f64>,
    /// Met, not met, or not measured (`None`).
    pub met: Option<bool>,
    /// How it was judged.
    pub note: String,
}

/// Nearest-rank percentile of sorted values.
fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median over rounds of `a`'s rate over `b`'s.
fn paired_ratio(at: &AtSize, a: Mode, b: Mode) -> Option<f64> {
    let a = &at.modes.get(a.as_str())?.rate.as_ref()?.rounds;
    let b = &at.modes.get(b.as_str())?.rate.as_ref()?.rounds;
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, y)| **y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    (!ratios.is_empty()).then(|| median(&ratios))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Report {
    /// An empty report for `settings`.
    pub fn new(settings: &Settings) -> Self {
        Report {
            settings: settings.clone(),
            machine: Machine {
                cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                iptables: command_line("iptables", &["--version"]),
                nft: command_line("nft", &["--version"]),
            },
            duration_s: 0.0,
            sizes: Vec::new(),
            goals: Vec::new(),
        }
    }

    fn mode(&self, services: usize, mode: Mode) -> Option<&ModeResult> {
        self.sizes
            .iter()
            .find(|s| s.services == services)?
            .modes
            .get(mode.as_str())
    }

    /// The median over rounds of `a`'s rate divided by `b`'s in the same
    /// round (measured seconds apart, so slow drift in the machine's load
    /// cancels out).
    fn rate_ratio(&self, services: usize, a: Mode, b: Mode) -> Option<f64> {
        let at = self.sizes.iter().find(|s| s.services == services)?;
        paired_ratio(at, a, b)
    }

    /// Judges the goals against what was measured.
    pub fn judge(&mut self) {
        let largest = self.sizes.iter().map(|s| s.services).max().unwrap_or(0);
        let at_10k =
            |report: &Report, what: &str, f: &dyn Fn(&Report, usize) -> Option<f64>| match f(
                report, 10_000,
            ) {
                Some(v) => (Some(v), String::new()),
                None => (
                    None,
                    format!(
                        "not measured at 10,000 Services{}",
                        f(report, largest)
                            .map(|v| format!(" (at {largest}: {what} {v:.3})"))
                            .unwrap_or_default()
                    ),
                ),
            };
        let ratio = |a: Mode, b: Mode| move |r: &Report, n: usize| r.rate_ratio(n, a, b);
        let mut goals = Vec::new();
        for (goal, what, f, threshold) in [
            (
                "10,000 Services: eBPF new-connection rate >= 0.95 x direct",
                "ebpf/direct",
                &ratio(Mode::Ebpf, Mode::Direct) as &dyn Fn(&Report, usize) -> Option<f64>,
                0.95,
            ),
            (
                "10,000 Services: eBPF new-connection rate >= 3 x iptables",
                "ebpf/iptables",
                &ratio(Mode::Ebpf, Mode::Iptables),
                3.0,
            ),
        ] {
            let (measured, note) = at_10k(self, what, f);
            goals.push(Goal {
                goal: goal.to_owned(),
                measured,
                met: measured.map(|v| v >= threshold),
                note: if note.is_empty() {
                    format!("{what} = {:.3}", measured.unwrap_or(f64::NAN))
                } else {
                    note
                },
            });
        }
        let one = ratio(Mode::Ebpf, Mode::Iptables)(self, 1);
        goals.push(Goal {
            goal: "1 Service: eBPF not slower than iptables (new-connection rate)".to_owned(),
            measured: one,
            met: one.map(|v| v >= 1.0),
            note: one.map_or("not measured".to_owned(), |v| {
                format!("ebpf/iptables = {v:.3}")
            }),
        });
        let change =
            |r: &Report, n: usize| r.mode(n, Mode::Ebpf)?.change.as_ref().map(|c| c.p99_ms);
        let (measured, note) = at_10k(self, "p99 ms", &change);
        goals.push(Goal {
            goal: "10,000 Services: one endpoint change <= 1 ms p99 (eBPF)".to_owned(),
            measured,
            met: measured.map(|v| v <= 1.0),
            note: if note.is_empty() {
                format!(
                    "p99 = {:.3} ms over {} changes",
                    measured.unwrap_or(f64::NAN),
                    self.mode(10_000, Mode::Ebpf)
                        .and_then(|m| m.change.as_ref())
                        .map_or(0, |c| c.total_ms.len())
                )
            } else {
                note
            },
        });
        self.goals = goals;
    }

    /// Prints the table and the goals.
    pub fn print(&self) {
        println!();
        println!(
            "Service load balancing, {} CPUs, kernel {}, {}, {}",
            self.machine.cpus, self.machine.kernel, self.machine.iptables, self.machine.nft
        );
        println!(
            "rates: median of {} rounds of {:.1} s per mode, {} connections in flight, modes interleaved; latency: {} kept-alive connections, {} rounds of {:.1} s",
            self.settings.rounds,
            self.settings.round_duration.as_secs_f64(),
            self.settings.concurrency,
            self.settings.latency_connections,
            self.settings.latency_rounds,
            self.settings.latency_duration.as_secs_f64()
        );
        for at in &self.sizes {
            println!();
            println!(
                "== {} Service{} x 10 endpoints (load average at start: {}) ==",
                group(at.services as f64, 0),
                if at.services == 1 { "" } else { "s" },
                at.load_average
            );
            println!(
                "{:<34}{:>12}{:>12}{:>12}{:>12}  {:>12}{:>14}",
                "", "direct", "ebpf", "iptables", "nftables", "ebpf/direct", "ebpf/iptables"
            );
            type Metric<'a> = (&'a str, Box<dyn Fn(&ModeResult) -> Option<f64> + 'a>, usize);
            let metrics: Vec<Metric<'_>> = vec![
                (
                    "new connections/s (median)",
                    Box::new(|m: &ModeResult| m.rate.as_ref().map(|r| r.median)),
                    0,
                ),
                (
                    "request latency p50 (us)",
                    Box::new(|m: &ModeResult| m.latency.as_ref().map(|l| f64::from(l.p50_us))),
                    0,
                ),
                (
                    "request latency p99 (us)",
                    Box::new(|m: &ModeResult| m.latency.as_ref().map(|l| f64::from(l.p99_us))),
                    0,
                ),
                (
                    "program all Services (ms)",
                    Box::new(|m: &ModeResult| m.program_ms),
                    1,
                ),
                (
                    "endpoint change p50 (ms)",
                    Box::new(|m: &ModeResult| m.change.as_ref().map(|c| c.p50_ms)),
                    3,
                ),
                (
                    "endpoint change p99 (ms)",
                    Box::new(|m: &ModeResult| m.change.as_ref().map(|c| c.p99_ms)),
                    3,
                ),
                (
                    "  changes measured",
                    Box::new(|m: &ModeResult| m.change.as_ref().map(|c| c.total_ms.len() as f64)),
                    0,
                ),
            ];
            for (name, f, decimals) in &metrics {
                let mut line = format!("{name:<34}");
                let mut values = BTreeMap::new();
                for mode in MODES {
                    let result = at.modes.get(mode.as_str());
                    let cell = match result {
                        Some(r) if r.skipped.is_some() => "skipped".to_owned(),
                        Some(r) => match f(r) {
                            Some(v) => {
                                values.insert(mode, v);
                                group(v, *decimals)
                            }
                            None => "-".to_owned(),
                        },
                        None => "-".to_owned(),
                    };
                    line.push_str(&format!("{cell:>12}"));
                }
                let ratio = |b: Mode| {
                    if name.starts_with("  ") {
                        return String::new();
                    }
                    if name.starts_with("new connections") {
                        return paired_ratio(at, Mode::Ebpf, b)
                            .map_or(String::new(), |r| format!("{r:.2}x"));
                    }
                    match (values.get(&Mode::Ebpf), values.get(&b)) {
                        (Some(a), Some(b)) if *b > 0.0 => format!("{}x", significant(a / b)),
                        _ => String::new(),
                    }
                };
                line.push_str(&format!(
                    "  {:>12}{:>14}",
                    ratio(Mode::Direct),
                    ratio(Mode::Iptables)
                ));
                println!("{line}");
            }
            for mode in MODES {
                if let Some(r) = at.modes.get(mode.as_str()) {
                    if let Some(why) = &r.skipped {
                        println!("  {}: {why}", mode.as_str());
                    }
                    if let Some(rate) = &r.rate
                        && rate.errors > 0
                    {
                        println!(
                            "  {}: {} failed connections (first: {})",
                            mode.as_str(),
                            rate.errors,
                            rate.first_error.as_deref().unwrap_or("-")
                        );
                    }
                }
            }
        }
        println!();
        println!(
            "(ratios: ebpf's figure divided by the other's, for rates the median of per-round ratios; higher is better for rates, lower for times)"
        );
        println!("Goals");
        for goal in &self.goals {
            let verdict = match goal.met {
                Some(true) => "MET    ",
                Some(false) => "NOT MET",
                None => "n/a    ",
            };
            println!("  [{verdict}] {}: {}", goal.goal, goal.note);
        }
        println!("run took {:.0} s", self.duration_s);
    }

    /// Draws four panels (rate, latency p99, programming, endpoint change
    /// p99) against the Service count.
    pub fn plot(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        register_font()?;
        let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            "Service load balancing: eBPF vs kube-proxy (iptables, nftables) vs direct",
            ("sans-serif", 26),
        )?;
        let panels = root.split_evenly((2, 2));
        type Get = fn(&ModeResult) -> Option<f64>;
        let specs: [(&str, &str, bool, Get); 4] = [
            (
                "New TCP connections per second (median round)",
                "connections/s",
                false,
                |m| m.rate.as_ref().map(|r| r.median),
            ),
            (
                "Request latency p99, kept-alive connections",
                "µs",
                false,
                |m| m.latency.as_ref().map(|l| f64::from(l.p99_us)),
            ),
            ("Program all Services from scratch", "ms (log)", true, |m| {
                m.program_ms
            }),
            (
                "One endpoint change until packets follow (p99)",
                "ms (log)",
                true,
                |m| m.change.as_ref().map(|c| c.p99_ms),
            ),
        ];
        let colors = [
            (Mode::Direct, RGBColor(60, 60, 60)),
            (Mode::Ebpf, RGBColor(0, 150, 70)),
            (Mode::Iptables, RGBColor(210, 40, 40)),
            (Mode::Nftables, RGBColor(40, 90, 210)),
        ];
        let max_n = self.sizes.iter().map(|s| s.services).max().unwrap_or(1) as f64;
        for (panel, (title, unit, log, get)) in panels.iter().zip(specs) {
            let series: Vec<Series> = colors
                .iter()
                .map(|&(mode, color)| {
                    let points = self
                        .sizes
                        .iter()
                        .filter_map(|at| {
                            let r = at.modes.get(mode.as_str())?;
                            let v = get(r)?;
                            (v.is_finite() && (!log || v > 0.0)).then_some((at.services as f64, v))
                        })
                        .collect();
                    (mode, color, points)
                })
                .filter(|(_, _, p): &Series| !p.is_empty())
                .collect();
            let values = series
                .iter()
                .flat_map(|(_, _, p)| p.iter().map(|(_, v)| *v));
            let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
            if hi <= 0.0 {
                continue;
            }
            let x = (0.7f64..max_n * 1.5).log_scale();
            let mut chart = ChartBuilder::on(panel);
            chart
                .caption(title, ("sans-serif", 20))
                .margin(14)
                .x_label_area_size(40)
                .y_label_area_size(80);
            let x_desc = "Services (10 endpoints each, log)";
            if log {
                let mut c = chart.build_cartesian_2d(x, (lo / 2.0..hi * 2.0).log_scale())?;
                c.configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(unit)
                    .x_label_formatter(&|v| group(*v, 0))
                    .y_label_formatter(&|v| significant(*v))
                    .draw()?;
                draw_series(&mut c, &series)?;
            } else {
                let mut c = chart.build_cartesian_2d(x, 0.0..hi * 1.15)?;
                c.configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(unit)
                    .x_label_formatter(&|v| group(*v, 0))
                    .y_label_formatter(&|v| group(*v, 0))
                    .draw()?;
                draw_series(&mut c, &series)?;
            }
        }
        root.present().context("failed to write the PNG")?;
        Ok(())
    }
}

fn draw_series<'a, DB: plotters::prelude::DrawingBackend + 'a, X, Y>(
    chart: &mut plotters::prelude::ChartContext<'a, DB, plotters::prelude::Cartesian2d<X, Y>>,
    series: &[Series],
) -> Result<()>
where
    X: plotters::prelude::Ranged<ValueType = f64>,
    Y: plotters::prelude::Ranged<ValueType = f64>,
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    for (mode, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(mode.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 5, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Registers a TrueType font for the plot's text (plotters draws none of
/// its own); Debian's `fonts-dejavu-core` provides one.
fn register_font() -> Result<()> {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];
    let bytes = CANDIDATES
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no TrueType font found (install fonts-dejavu-core)")?;
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("the font could not be parsed"))
}

/// One mode's points (Service count, value) in one panel.
type Series = (Mode, plotters::prelude::RGBColor, Vec<(f64, f64)>);

/// Three significant digits: `0.95`, `0.00203`, `12.3`.
fn significant(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let digits = (2 - value.abs().log10().floor() as i32).max(0) as usize;
    format!("{value:.digits$}")
}

/// `12,345` or `12,345.6` (thousands grouped).
fn group(value: f64, decimals: usize) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    let text = format!("{:.*}", decimals, value.abs());
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[7u32], 0.99), Some(7));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(1234567.0, 0), "1,234,567");
        assert_eq!(group(999.0, 0), "999");
        assert_eq!(group(13312.46, 1), "13,312.5");
        assert_eq!(group(0.123, 3), "0.123");
        assert_eq!(significant(0.002034), "0.00203");
        assert_eq!(significant(0.95), "0.950");
        assert_eq!(significant(12.34), "12.3");
        assert_eq!(significant(1234.0), "1234");
    }
}
