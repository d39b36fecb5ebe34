//! `shoal worker`: one worker process, or a supervisor keeping N of them
//! connected (the external worker container of a raylet pod).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shoal::worker::Registry;
use shoal::WorkerId;

/// Flags of `shoal worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The raylet's worker socket.
    #[arg(long, env = "SHOAL_RAYLET_SOCKET")]
    pub raylet_socket: PathBuf,
    /// This worker's id (given by the raylet that starts it; random otherwise).
    #[arg(long, env = "SHOAL_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Keep this many worker processes connected, restarting any that exit.
    #[arg(long)]
    pub num_workers: Option<usize>,
}

/// Runs the worker (or the supervisor).
pub fn run(args: &WorkerArgs) -> ExitCode {
    if let Some(n) = args.num_workers {
        return supervise(args, n);
    }
    let id = match &args.worker_id {
        Some(s) => match s.parse::<WorkerId>() {
            Ok(id) => id,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => WorkerId::random(),
    };
    let registry = Registry::standard();
    match shoal::worker::run(&args.raylet_socket, id, &registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: worker {id}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn supervise(args: &WorkerArgs, n: usize) -> ExitCode {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("shoal"));
    let spawn = || {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("worker").arg("--raylet-socket").arg(&args.raylet_socket).env_remove("SHOAL_WORKER_ID");
        shoal::process::die_with_parent(&mut cmd);
        cmd.spawn()
    };
    let mut children: Vec<Option<std::process::Child>> = (0..n).map(|_| spawn().ok()).collect();
    loop {
        for slot in children.iter_mut() {
            let alive = match slot {
                Some(c) => matches!(c.try_wait(), Ok(None)),
                None => false,
            };
            if !alive {
                std::thread::sleep(Duration::from_millis(200));
                *slot = spawn().ok();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
