//! What this machine (or container) offers: CPUs and memory, honouring
//! cgroup limits so that a raylet in a pod sees its limits, not the host's.

/// CPUs available: the cgroup quota if one is set, else the CPU count.
pub fn cpus() -> f64 {
    if let Ok(text) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        let mut it = text.split_whitespace();
        if let (Some(q), Some(p)) = (it.next(), it.next()) {
            if let (Ok(q), Ok(p)) = (q.parse::<f64>(), p.parse::<f64>()) {
                if p > 0.0 {
                    return (q / p).max(0.0001);
                }
            }
        }
    }
    std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0)
}

/// Memory in bytes: the cgroup limit if one is set, else physical memory.
pub fn memory() -> u64 {
    if let Ok(text) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        if let Ok(v) = text.trim().parse::<u64>() {
            return v;
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30)
}
