//! Container logs as containerd's CRI plugin writes them
//! (`<RFC 3339 nano> <stdout|stderr> <F|P> <text>` per line), turned back into
//! what the container printed, for `kubectl logs`.

/// Options of a log read.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Prefix each line with its timestamp.
    pub timestamps: bool,
    /// Only lines newer than this (RFC 3339).
    pub since: Option<jiff::Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The timestamp as written.
    pub time: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// Whether the line is complete (`F`) or a partial chunk (`P`).
    pub full: bool,
    /// The text.
    pub text: &'a str,
}

/// Parses one CRI log line.
pub fn parse_line(line: &str) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("");
    Some(LogLine {
        time,
        stream,
        full: !tag.starts_with('P'),
        text,
    })
}

/// Renders CRI log file content (whole lines only) as the container's output.
pub fn render(content: &str, opts: &LogOptions) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut partial = String::new();
    for line in content.lines() {
        let Some(l) = parse_line(line) else { continue };
        if let Some(since) = opts.since
            && l.time.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
        {
            continue;
        }
        if partial.is_empty() && opts.timestamps {
            partial.push_str(l.time);
            partial.push(' ');
        }
        partial.push_str(l.text);
        if l.full {
            partial.push('\n');
            out.push(std::mem::take(&mut partial));
        }
    }
    if !partial.is_empty() {
        out.push(partial);
    }
    if let Some(n) = opts.tail_lines {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    let mut s = out.concat();
    if let Some(limit) = opts.limit_bytes {
        s.truncate(limit);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-01T00:00:00.1Z stdout F one\n\
2026-01-01T00:00:01.1Z stderr F two\n\
2026-01-01T00:00:02.1Z stdout P thr\n\
2026-01-01T00:00:02.2Z stdout F ee\n\
2026-01-01T00:00:03.1Z stdout F \n";

    #[test]
    fn renders_lines_tails_and_timestamps() {
        assert_eq!(render(LOG, &LogOptions::default()), "one\ntwo\nthree\n\n");
        let tail = LogOptions { tail_lines: Some(2), ..Default::default() };
        assert_eq!(render(LOG, &tail), "three\n\n");
        let ts = LogOptions { timestamps: true, tail_lines: Some(1), ..Default::default() };
        assert_eq!(render(LOG, &ts), "2026-01-01T00:00:03.1Z \n");
        let since = LogOptions { since: Some("2026-01-01T00:00:01Z".parse().unwrap()), ..Default::default() };
        assert_eq!(render(LOG, &since), "two\nthree\n\n");
        let limit = LogOptions { limit_bytes: Some(5), ..Default::default() };
        assert_eq!(render(LOG, &limit), "one\nt");
    }
}
