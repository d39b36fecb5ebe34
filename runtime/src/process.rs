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
///
/// The signal is tied to the thread that spawns the child, so spawn from a
/// thread that lives at least as long as the child. A parent that died
/// before the signal was armed makes the spawn fail rather than leave an
/// orphan.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and makes only the
    // async-signal-safe calls prctl and getppid, allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            parent_death_signal()?;
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// How long a group watcher sleeps between checks that its parent lives,
/// should its parent-death signal ever be missed.
const GROUP_WATCH_POLL: libc::timespec = libc::timespec { tv_sec: 1, tv_nsec: 0 };

/// A process group whose members all die together: with the group's
/// handle (dropping it SIGKILLs the group) and with the thread holding it
/// (or its whole process), however that ends.
///
/// `PR_SET_PDEATHSIG` reaches a direct child only: a shell that forks its
/// command dies with its parent, but the command is orphaned and lives on.
/// So beside the leader, a small watcher process joins the group; it is a
/// child of the process holding the handle, is armed with a catchable
/// parent-death signal, and SIGKILLs the whole group once that process is
/// gone, however it went (even SIGKILL). The watcher also keeps the group id
/// in use after the leader is reaped, so signalling the group can never hit
/// an unrelated process that reused the id. A member that leaves the group
/// (`setsid`, a job-control shell) escapes; nothing short of a cgroup or
/// PID namespace catches that.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: i32,
    watcher: i32,
}

impl ProcessGroup {
    /// Makes `cmd`'s child lead a new process group and die with its parent;
    /// call [`ProcessGroup::watch`] with its pid once it is spawned.
    pub fn prepare(cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        die_with_parent(cmd);
    }

    /// Starts the watcher of the group led by `leader` (spawned from a
    /// command set up by [`ProcessGroup::prepare`]). Call it from the thread
    /// that spawned the leader, which must outlive the group.
    pub fn watch(leader: u32) -> std::io::Result<ProcessGroup> {
        let pgid = leader as i32;
        let parent = std::process::id() as i32;
        // The watcher says when its parent-death signal is armed: a thread
        // that ends right after this returns must still be seen to end.
        let mut armed = [0i32; 2];
        // SAFETY: pipe2 fills the two descriptors it is given.
        if unsafe { libc::pipe2(armed.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the child runs only async-signal-safe system calls (no
        // allocation, no locks) until it exits, as a fork of a
        // multi-threaded process must.
        match unsafe { libc::fork() } {
            -1 => {
                let e = std::io::Error::last_os_error();
                // SAFETY: closes the pipe made above.
                unsafe {
                    libc::close(armed[0]);
                    libc::close(armed[1]);
                }
                Err(e)
            }
            0 => unsafe { watch_group(pgid, parent, armed[1]) },
            watcher => {
                // SAFETY: closes our write end, then waits for one byte (or
                // the end of file, if the watcher exited) on the read end.
                unsafe {
                    libc::close(armed[1]);
                    let mut b = 0u8;
                    while libc::read(armed[0], (&mut b as *mut u8).cast(), 1) < 0
                        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                    {
                    }
                    libc::close(armed[0]);
                }
                Ok(ProcessGroup { pgid, watcher })
            }
        }
    }

    /// The group id (the leader's pid).
    pub fn id(&self) -> i32 {
        self.pgid
    }

    /// Sends `signal` to every member but the watcher, which blocks all
    /// catchable signals; SIGKILL ends the watcher too.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a group this handle keeps alive.
        unsafe {
            libc::kill(-self.pgid, signal);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        // SAFETY: reaps the watcher this handle forked; it was just killed.
        unsafe {
            libc::waitpid(self.watcher, std::ptr::null_mut(), 0);
        }
    }
}

/// The group watcher's whole life, in a forked child: join the group, close
/// every inherited descriptor (the command's pipes must reach end of file
/// without it, and the spawner's exec-error pipe must close), wait for the
/// parent to go, kill the group.
///
/// # Safety
/// Only in the child of a fork; it never returns.
unsafe fn watch_group(pgid: i32, parent: i32, armed: i32) -> ! {
    fn kill_group_and_exit(pgid: i32) -> ! {
        // SAFETY: async-signal-safe calls in the watcher, which ends here.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
            libc::_exit(0)
        }
    }
    // SAFETY (whole block): async-signal-safe system calls on this process.
    unsafe {
        // The leader is gone already (its group with it): nothing to guard.
        if libc::setpgid(0, pgid) != 0 {
            libc::_exit(0);
        }
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1 as libc::c_ulong, 0, 0, 0);
        // Armed: from here the spawning thread's end reaches this process.
        libc::write(armed, b"1".as_ptr().cast(), 1);
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            // Kernels before 5.9: close one by one.
            for fd in 0..65_536 {
                libc::close(fd);
            }
        }
        if libc::getppid() != parent {
            kill_group_and_exit(pgid);
        }
        let mut wake: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut wake);
        libc::sigaddset(&mut wake, libc::SIGUSR1);
        // The signal comes when the spawning thread ends, as the leader's
        // does; the poll catches a parent that is gone all the same.
        while libc::getppid() == parent {
            if libc::sigtimedwait(&wake, std::ptr::null_mut(), &GROUP_WATCH_POLL) == libc::SIGUSR1 {
                break;
            }
        }
    }
    kill_group_and_exit(pgid)
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

/// Whether process `pid` runs: it exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
}

/// Writes `body` to `path` atomically (write, then rename).
pub fn write_ready_file(path: &std::path::Path, body: &serde_json::Value) -> Result<(), crate::error::Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string())
        .map_err(|e| crate::error::Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| crate::error::Error::io(format!("renaming {}", tmp.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    fn gone_within(pids: &[u32], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while pids.iter().any(|p| is_running(*p)) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Starts a shell that forks a long sleep into the background and
    /// prints its pid; returns the group, the shell and the sleep's pid.
    fn shell_with_a_grandchild() -> (ProcessGroup, std::process::Child, u32) {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 1000 & echo $!; wait"]).stdout(std::process::Stdio::piped());
        ProcessGroup::prepare(&mut cmd);
        let mut shell = cmd.spawn().unwrap();
        let group = ProcessGroup::watch(shell.id()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(shell.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let sleep: u32 = line.trim().parse().unwrap();
        assert!(is_running(sleep));
        (group, shell, sleep)
    }

    #[test]
    fn dropping_a_group_kills_the_grandchildren_of_its_leader() {
        let (group, mut shell, sleep) = shell_with_a_grandchild();
        assert_eq!(group.id(), shell.id() as i32);
        drop(group);
        shell.wait().unwrap();
        assert!(gone_within(&[sleep], Duration::from_secs(5)), "the backgrounded sleep {sleep} survived its group");
    }

    #[test]
    fn a_group_dies_with_the_thread_that_holds_it() {
        // The thread ends without dropping the handle, as a killed worker
        // would: the leader's and the watcher's parent-death signals fire.
        let (shell, sleep) = std::thread::spawn(|| {
            let (group, shell, sleep) = shell_with_a_grandchild();
            std::mem::forget(group);
            (shell, sleep)
        })
        .join()
        .unwrap();
        assert!(gone_within(&[shell.id(), sleep], Duration::from_secs(5)), "the group outlived its thread");
    }

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
