//! `exec` tasks: a command line run as a child process of the worker.
//!
//! The resolved arguments go to the child's stdin as one JSON array, and its
//! stdout is the result: parsed as JSON, or kept as text with `output: text`.
//! A non-zero exit, a signal or an unreadable result becomes an `ExecFailed`
//! task error carrying the tail of the child's stderr.
//!
//! Invariants: stdin is written and stdout and stderr are read on separate
//! threads, so a child may write any amount before reading its input without
//! deadlocking; only a bounded tail of stderr is kept in memory; the child
//! leads a process group of its own, which is killed when the child exits
//! (what it left running in the background ends with the task) and when the
//! thread that started it dies (a watcher process, as for entrypoint jobs), so
//! nothing the command starts outlives its task or its worker.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use serde_json::Value as Json;
use shoal_proto::v1 as pb;

use crate::error::{ErrorKind, TaskError};
use crate::process::ProcessGroup;
use crate::value::Value;

/// Most stderr lines kept in a task error.
pub const STDERR_TAIL_LINES: usize = 20;
/// Most stderr bytes kept in a task error.
pub const STDERR_TAIL_BYTES: usize = 4096;
/// Stderr bytes buffered while the child runs; only the end is kept.
const STDERR_BUFFER_BYTES: usize = 64 * 1024;
/// Characters of a bad stdout quoted in the error.
const STDOUT_QUOTE_CHARS: usize = 200;

/// Runs the command `f` with `args` on its stdin and returns what it printed.
///
/// With `num_returns` above 1, stdout must be a JSON array of exactly that
/// many values (the worker splits it). Blocks until the child exits.
// `TaskError` is large, but it is the runtime's task failure and this path is
// cold: a child process was just started.
#[allow(clippy::result_large_err)]
pub fn run_exec(f: &pb::ExecFunction, args: &[Value], num_returns: u32) -> Result<Value, TaskError> {
    let Some(program) = f.argv.first().filter(|p| !p.is_empty()) else {
        return Err(failed("the command line is empty"));
    };
    let input = stdin_payload(args).map_err(failed)?;

    let mut cmd = Command::new(program);
    cmd.args(f.argv.iter().skip(1)).envs(&f.env).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if !f.cwd.is_empty() {
        // Checked here because a missing directory makes spawn fail with the
        // same "not found" as a missing program.
        if !Path::new(&f.cwd).is_dir() {
            return Err(failed(format!("working directory `{}` of `{program}` is not a directory", f.cwd)));
        }
        cmd.current_dir(&f.cwd);
    }
    ProcessGroup::prepare(&mut cmd);

    let mut child = cmd.spawn().map_err(|e| failed(format!("cannot run `{program}`: {e}")))?;
    let group = match ProcessGroup::watch(child.id()) {
        Ok(g) => g,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("cannot watch the process group of `{program}`: {e}")));
        }
    };
    let (status, output) = collect(&mut child, input, group);
    let (stdout, stderr_tail) = output.map_err(|e| failed(format!("talking to `{program}`: {e}")))?;
    let status = status.map_err(|e| failed(format!("waiting for `{program}`: {e}")))?;

    let with_tail = |message: String| {
        let mut e = failed(message);
        e.stderr_tail = stderr_tail.clone();
        e
    };
    if let Some(why) = exit_problem(status) {
        return Err(with_tail(format!("`{program}` {why}")));
    }
    let value =
        if f.output_text { text_result(program, stdout) } else { json_result(program, &stdout) }.map_err(with_tail)?;
    check_returns(program, &value, num_returns).map_err(with_tail)?;
    Ok(value)
}

fn failed(message: impl Into<String>) -> TaskError {
    TaskError::new(ErrorKind::ExecFailed, message)
}

/// The arguments as one JSON array; raw bytes pass as text when they are UTF-8.
fn stdin_payload(args: &[Value]) -> Result<Vec<u8>, String> {
    let mut items = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        items.push(match a {
            Value::Json(j) => j.clone(),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => Json::String(s.to_string()),
                Err(_) => return Err(format!("argument {i} is binary; exec tasks take JSON")),
            },
        });
    }
    let mut payload =
        serde_json::to_vec(&Json::Array(items)).map_err(|e| format!("cannot encode the arguments: {e}"))?;
    payload.push(b'\n');
    Ok(payload)
}

/// Feeds stdin and drains stdout and stderr concurrently while the command
/// runs; once it exits, kills what it left running in its process group (a
/// shell's background job would otherwise outlive the task, and keep its
/// output pipes open). Returns the command's exit status, all of stdout and
/// the tail of stderr.
fn collect(child: &mut Child, input: Vec<u8>, group: ProcessGroup) -> (io::Result<ExitStatus>, io::Result<Output>) {
    let threads = start_io(child, input);
    // Always reap the child, even when the helper threads could not start.
    let status = child.wait();
    drop(group);
    (status, threads.and_then(finish_io))
}

type Output = (Vec<u8>, String);
type IoThreads = (JoinHandle<()>, JoinHandle<String>, JoinHandle<io::Result<Vec<u8>>>);

fn start_io(child: &mut Child, input: Vec<u8>) -> io::Result<IoThreads> {
    let stdin = child.stdin.take();
    let writer = spawn_named("exec-stdin", move || {
        if let Some(mut stdin) = stdin {
            // A child that exits without reading its input is not an error:
            // its exit status and output say how it went.
            let _ = stdin.write_all(&input);
        }
        // Dropping stdin closes it, so the child sees end of input.
    });
    let stderr = child.stderr.take();
    let reader = spawn_named("exec-stderr", move || stderr.map(read_tail).unwrap_or_default());
    let stdout = child.stdout.take();
    let out = spawn_named("exec-stdout", move || {
        let mut buf = Vec::new();
        match stdout {
            Some(mut out) => out.read_to_end(&mut buf).map(|_| buf),
            None => Ok(buf),
        }
    });
    match (writer, reader, out) {
        (Ok(w), Ok(r), Ok(o)) => Ok((w, r, o)),
        (w, r, o) => {
            // Without every helper thread the child could block forever.
            let _ = child.kill();
            let _ = w.map(JoinHandle::join);
            let _ = r.map(JoinHandle::join);
            let _ = o.map(JoinHandle::join);
            Err(io::Error::other("cannot start the threads that feed the command"))
        }
    }
}

fn finish_io((writer, reader, out): IoThreads) -> io::Result<Output> {
    let _ = writer.join();
    let tail = reader.join().unwrap_or_default();
    let stdout = out.join().map_err(|_| io::Error::other("the stdout reader panicked"))??;
    Ok((stdout, tail))
}

fn spawn_named<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.to_string()).spawn(f)
}

/// Reads a stream to its end keeping only the last [`STDERR_BUFFER_BYTES`],
/// then cuts that to the tail a task error carries.
fn read_tail(mut r: impl Read) -> String {
    let mut kept: VecDeque<u8> = VecDeque::with_capacity(8192);
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend(buf.iter().take(n));
                let excess = kept.len().saturating_sub(STDERR_BUFFER_BYTES);
                kept.drain(..excess);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let bytes: Vec<u8> = kept.into_iter().collect();
    stderr_tail(&String::from_utf8_lossy(&bytes))
}

/// The last [`STDERR_TAIL_LINES`] lines of `text`, at most
/// [`STDERR_TAIL_BYTES`] bytes (cut at a character boundary).
fn stderr_tail(text: &str) -> String {
    let text = text.trim_end_matches('\n');
    let mut start = text.len();
    for _ in 0..STDERR_TAIL_LINES {
        match text.get(..start).and_then(|head| head.rfind('\n')) {
            Some(nl) => start = nl,
            None => {
                start = 0;
                break;
            }
        }
    }
    let mut tail = text.get(start..).unwrap_or_default().trim_start_matches('\n');
    while tail.len() > STDERR_TAIL_BYTES {
        let cut = tail.len() - STDERR_TAIL_BYTES;
        let boundary = (cut..tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
        tail = tail.get(boundary..).unwrap_or_default();
    }
    tail.to_string()
}

/// Why a finished child failed, or `None` if it exited with status 0.
fn exit_problem(status: ExitStatus) -> Option<String> {
    if let Some(code) = status.code() {
        return (code != 0).then(|| format!("exited with status {code}"));
    }
    match status.signal() {
        Some(sig) => Some(format!("was killed by signal {sig}{}", signal_name(sig))),
        None => Some(format!("ended abnormally ({status})")),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGQUIT => " (SIGQUIT)",
        libc::SIGILL => " (SIGILL)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGFPE => " (SIGFPE)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGPIPE => " (SIGPIPE)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

/// Stdout as a string, without one trailing newline.
fn text_result(program: &str, mut stdout: Vec<u8>) -> Result<Value, String> {
    if stdout.last() == Some(&b'\n') {
        stdout.pop();
        if stdout.last() == Some(&b'\r') {
            stdout.pop();
        }
    }
    String::from_utf8(stdout)
        .map(|s| Value::Json(Json::String(s)))
        .map_err(|e| format!("`{program}` wrote {} bytes to stdout that are not UTF-8 text", e.as_bytes().len()))
}

fn json_result(program: &str, stdout: &[u8]) -> Result<Value, String> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("`{program}` wrote nothing to stdout; it must print a JSON value (or use `output: text`)"));
    }
    serde_json::from_slice(stdout).map(Value::Json).map_err(|_| {
        let quote: String = String::from_utf8_lossy(stdout).chars().take(STDOUT_QUOTE_CHARS).collect();
        format!("stdout is not JSON (use `output: text` to keep it as text): {quote}")
    })
}

fn check_returns(program: &str, value: &Value, num_returns: u32) -> Result<(), String> {
    if num_returns <= 1 {
        return Ok(());
    }
    match value {
        Value::Json(Json::Array(items)) if items.len() == num_returns as usize => Ok(()),
        Value::Json(Json::Array(items)) => Err(format!(
            "`{program}` must print a JSON array of {num_returns} values for num_returns {num_returns}, \
             but the array has {}",
            items.len()
        )),
        _ => Err(format!(
            "`{program}` must print a JSON array of {num_returns} values for num_returns {num_returns}, \
             but printed something else"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exec(argv: &[&str]) -> pb::ExecFunction {
        pb::ExecFunction { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    fn sh(script: &str) -> pb::ExecFunction {
        exec(&["sh", "-c", script])
    }

    #[test]
    fn arguments_arrive_on_stdin_and_json_stdout_is_the_result() {
        let f = exec(&[
            "python3",
            "-c",
            "import json, sys; a = json.load(sys.stdin); print(json.dumps({'sum': a[0] + a[1], 'text': a[2]}))",
        ]);
        let args = [Value::Json(json!(40)), Value::Json(json!(2)), Value::Bytes(bytes::Bytes::from_static(b"hi"))];
        assert_eq!(run_exec(&f, &args, 1).unwrap(), Value::Json(json!({"sum": 42, "text": "hi"})));
    }

    #[test]
    fn text_output_keeps_stdout_minus_one_newline() {
        let mut f = sh("printf 'hello\\n\\n'");
        f.output_text = true;
        assert_eq!(run_exec(&f, &[], 1).unwrap(), Value::Json(json!("hello\n")));
    }

    #[test]
    fn env_and_cwd_apply_to_the_child() {
        let mut f = sh("echo \"\\\"$SHOAL_TEST_VAR $(pwd)\\\"\"");
        f.env.insert("SHOAL_TEST_VAR".into(), "set".into());
        f.cwd = "/".into();
        assert_eq!(run_exec(&f, &[], 1).unwrap(), Value::Json(json!("set /")));
        f.cwd = "/no/such/dir".into();
        let e = run_exec(&f, &[], 1).unwrap_err();
        assert!(e.message.contains("/no/such/dir"), "{e}");
    }

    #[test]
    fn non_zero_exit_fails_with_the_stderr_tail() {
        let f = sh("for i in $(seq 1 30); do echo line$i >&2; done; exit 3");
        let e = run_exec(&f, &[], 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ExecFailed);
        assert_eq!(e.message, "`sh` exited with status 3");
        let lines: Vec<&str> = e.stderr_tail.lines().collect();
        assert_eq!(lines.len(), 20);
        assert_eq!(lines.first(), Some(&"line11"));
        assert_eq!(lines.last(), Some(&"line30"));
    }

    #[test]
    fn long_stderr_lines_are_cut_to_four_kib() {
        let f = exec(&["python3", "-c", "import sys; sys.stderr.write('é' * 100000); sys.exit(1)"]);
        let e = run_exec(&f, &[], 1).unwrap_err();
        assert!(e.stderr_tail.len() <= STDERR_TAIL_BYTES && e.stderr_tail.len() > 4000, "{}", e.stderr_tail.len());
    }

    #[test]
    fn what_the_command_leaves_running_dies_when_the_task_ends() {
        // The background job keeps the shell's stdout open, and would keep
        // the task waiting for 30 s if it were not killed with the group.
        let started = std::time::Instant::now();
        let v = run_exec(&sh("sleep 30 & echo $!"), &[], 1).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the task waited for its background job");
        let pid = match v {
            Value::Json(j) => j.as_u64().expect("the background job's pid") as u32,
            other => panic!("expected a pid, got {other:?}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while crate::process::is_running(pid) {
            assert!(std::time::Instant::now() < deadline, "the background job {pid} outlived its task");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_signal_is_reported() {
        let e = run_exec(&sh("kill -9 $$"), &[], 1).unwrap_err();
        assert_eq!(e.message, "`sh` was killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn stdout_that_is_not_json_is_an_error() {
        let e = run_exec(&sh("echo not json; echo oops >&2"), &[], 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ExecFailed);
        assert!(e.message.starts_with("stdout is not JSON (use `output: text` to keep it as text): not json"), "{e}");
        assert_eq!(e.stderr_tail, "oops");
        let e = run_exec(&sh("true"), &[], 1).unwrap_err();
        assert!(e.message.contains("wrote nothing to stdout"), "{e}");
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = run_exec(&exec(&["shoal-no-such-program"]), &[], 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ExecFailed);
        assert!(e.message.contains("`shoal-no-such-program`") && e.message.contains("No such file"), "{e}");
        assert!(run_exec(&exec(&[]), &[], 1).is_err());
    }

    #[test]
    fn binary_arguments_are_refused() {
        let e = run_exec(&sh("cat"), &[Value::Bytes(bytes::Bytes::from_static(b"\xff\xfe"))], 1).unwrap_err();
        assert_eq!(e.message, "argument 0 is binary; exec tasks take JSON");
    }

    #[test]
    fn five_megabytes_each_way_do_not_deadlock() {
        // Writes all of its output before reading any input.
        let f = exec(&[
            "python3",
            "-c",
            "import sys, json; sys.stdout.write(json.dumps('x' * 5_000_000)); sys.stdout.flush(); \
             a = json.load(sys.stdin); sys.stderr.write(str(len(a[0])))",
        ]);
        let big = Value::Json(json!("y".repeat(5_000_000)));
        let Value::Json(Json::String(s)) = run_exec(&f, &[big], 1).unwrap() else { panic!("not a string") };
        assert_eq!(s.len(), 5_000_000);
    }

    #[test]
    fn multiple_returns_need_an_array_of_that_length() {
        assert_eq!(run_exec(&sh("echo '[1, 2]'"), &[], 2).unwrap(), Value::Json(json!([1, 2])));
        let e = run_exec(&sh("echo '[1, 2]'"), &[], 3).unwrap_err();
        assert!(e.message.contains("array of 3 values") && e.message.contains("has 2"), "{e}");
        let e = run_exec(&sh("echo 5"), &[], 2).unwrap_err();
        assert!(e.message.contains("array of 2 values"), "{e}");
    }
}
