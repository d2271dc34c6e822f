//! Peak resident memory of this process, for the "peak RSS" lines that
//! `edgeclr adapt`, `edgeclr demo` and the benches print: on an edge board the
//! high-water mark, not the average, decides whether a run fits.

/// Peak resident set size (Linux `VmHWM`) in bytes, or `None` where
/// `/proc/self/status` is unavailable (not Linux) or unreadable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// Peak RSS in MiB, `NaN` where unknown (so it prints as such in tables).
pub fn peak_rss_mib() -> f64 {
    peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))
}

/// The `VmHWM:  1234 kB` line of a `/proc/PID/status` text, in bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    let unit = match fields.next() {
        Some("kB") | None => 1024,
        Some(_) => return None,
    };
    Some(value * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_high_water_mark() {
        let status = "Name:\tedgeclr\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS: 5 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM: x kB\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn grows_when_memory_is_touched() {
        let before = peak_rss_bytes().unwrap_or(0);
        let block = vec![1u8; 64 << 20];
        let after = peak_rss_bytes().unwrap_or(0);
        assert!(block.iter().map(|&b| b as u64).sum::<u64>() == 64 << 20);
        assert!(after >= before.max(64 << 20), "{before} -> {after}");
    }
}
