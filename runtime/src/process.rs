//! Child processes and process trees: tying a child's life to its parent's,
//! walking `/proc` for descendants, killing a tree, reading memory use.
//!
//! Every process shoal starts (head and raylets under `shoal up`, workers
//! under a raylet, commands under a worker) gets `PR_SET_PDEATHSIG(SIGKILL)`,
//! so no process outlives the one that started it.

/// Asks the kernel to SIGKILL the calling process when its parent exits.
/// Meant for `pre_exec`: it runs between fork and exec, allocates nothing and
/// makes one async-signal-safe system call.
pub fn parent_death_signal() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG only changes this process's settings.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s child die when the process starting it does.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: `parent_death_signal` is safe to run between fork and exec.
    unsafe {
        cmd.pre_exec(parent_death_signal);
    }
}

/// Process ids whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if parent_of(child) == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses; the fields after the
    // last ')' are fixed: state, then the parent's pid.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every process below `pid` (not `pid` itself), parents before children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        for c in children_of(all[i]) {
            if !all.contains(&c) {
                all.push(c);
            }
        }
        i += 1;
    }
    all.remove(0);
    all
}

/// SIGKILLs `pid` and every process below it, deepest first.
pub fn kill_tree(pid: u32) {
    let mut tree = vec![pid];
    tree.extend(descendants(pid));
    for p in tree.into_iter().rev() {
        // SAFETY: kill(2) has no memory effects on this process.
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
}

/// Resident memory of `pid`, in bytes (0 when it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Resident memory of some processes and all their descendants, in bytes.
pub fn tree_rss(roots: &[u32]) -> u64 {
    let mut all: Vec<u32> = Vec::new();
    for r in roots {
        for p in std::iter::once(*r).chain(descendants(*r)) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
    }
    all.into_iter().map(rss_bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_found_below_its_parent_and_its_memory_counted() {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("5");
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let me = std::process::id();
        assert!(children_of(me).contains(&child.id()));
        assert!(descendants(me).contains(&child.id()));
        assert!(rss_bytes(child.id()) > 0);
        assert!(tree_rss(&[me]) >= rss_bytes(me));
        kill_tree(child.id());
        child.wait().unwrap();
        assert!(!children_of(me).contains(&child.id()));
    }
}
