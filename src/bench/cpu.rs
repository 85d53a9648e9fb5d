//! The machine's CPU time over the timed part of a benchmark, from Linux's `/proc/stat`: busy
//! time (user, nice, system, irq and softirq, over all cores: dsr, the database and the
//! benchmark's own client alike) and steal (time a virtual machine's host gave to others). On a
//! shared machine the wall-clock rates move with the neighbours (one build's `bench submit`
//! varied 346–696 /s in an hour); the CPU a unit of work costs moves far less, so the
//! benchmarks print it beside their rates. Elsewhere than Linux they print nothing of it.
use std::time::Duration;

/// A reading of the machine's CPU counters.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    steal: u64,
}

/// CPU time spent between two readings.
#[derive(Debug, Clone, Copy)]
pub struct Spent {
    pub busy: Duration,
    pub steal: Duration,
}

impl MachineCpu {
    /// Now; `None` where `/proc/stat` cannot be read.
    pub fn now() -> Option<Self> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// What was spent since this reading.
    pub fn spent(&self) -> Option<Spent> {
        let now = Self::now()?;
        let tick = ticks_per_second()?;
        let at = |ticks: u64| Duration::from_secs_f64(ticks as f64 / tick);
        Some(Spent {
            busy: at(now.busy.saturating_sub(self.busy)),
            steal: at(now.steal.saturating_sub(self.steal)),
        })
    }
}

impl Spent {
    /// "x.xx ms per <unit> (machine CPU …)", for `n` units.
    pub fn per(&self, n: usize, unit: &str) -> String {
        format!(
            "{:.2} ms per {unit}   (busy CPU of all cores over the timed part; {:.2} s stolen by the host)",
            self.busy.as_secs_f64() * 1000.0 / n.max(1) as f64,
            self.steal.as_secs_f64()
        )
    }
}

/// The `cpu` line: user nice system idle iowait irq softirq steal …
fn parse(stat: &str) -> Option<MachineCpu> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(MachineCpu { busy: at(0) + at(1) + at(2) + at(5) + at(6), steal: at(7) })
}

#[cfg(unix)]
fn ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as f64)
}

#[cfg(not(unix))]
fn ticks_per_second() -> Option<f64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_counts_user_nice_system_and_interrupts_and_steal_apart() {
        let stat = "cpu  100 5 40 9000 30 2 3 7 0 0\ncpu0 50 2 20 4500 15 1 1 3 0 0\nintr 1\n";
        let c = parse(stat).unwrap();
        assert_eq!((c.busy, c.steal), (150, 7));
        assert!(parse("intr 1\n").is_none());
    }

    #[test]
    fn a_reading_here_counts_forward() {
        if let Some(first) = MachineCpu::now() {
            let spent = first.spent().unwrap();
            assert!(spent.busy < Duration::from_secs(60));
        }
    }
}
