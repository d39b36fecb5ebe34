//! The builtin function registry: `builtin:NAME` tasks run the Rust function
//! registered under `NAME` in their worker.
//!
//! [`Registry::standard`] is the set shoal ships: small arithmetic, sleeping
//! and CPU-burning functions for tests and benchmarks, byte producers and
//! checksums for object-transfer checks, and the functions of the example
//! pipeline (`examples/pipeline.yaml`). A user's own worker binary starts from
//! it and [`Registry::register`]s more.
//!
//! Invariants: a builtin never panics on any input. Every argument is checked
//! and a bad one becomes an `Err` whose message starts with the function's
//! name and says which argument is wrong and why. Each builtin is a pure
//! function over its arguments with a thin [`BuiltinFn`] wrapper, so the logic
//! is tested without a running worker. A task with several returns gives back
//! one JSON array; the worker splits it, not the builtin.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value as Json};

use crate::value::Value;
use crate::worker::context::TaskContext;

/// The signature of a builtin: the task's context and its resolved
/// arguments in, one value or an error message out.
pub type BuiltinFn = fn(&mut TaskContext, Vec<Value>) -> Result<Value, String>;

/// One registered function.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    /// Name after `builtin:`.
    pub name: &'static str,
    /// One line: the arguments and what comes back.
    pub doc: &'static str,
    /// The function itself.
    pub func: BuiltinFn,
}

/// Builtins by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    builtins: BTreeMap<&'static str, Builtin>,
}

/// Wraps a pure `fn(Vec<Value>) -> Result<Value, String>` as a [`BuiltinFn`]
/// that ignores its context.
macro_rules! pure {
    ($f:path) => {{
        fn wrapper(_ctx: &mut TaskContext, args: Vec<Value>) -> Result<Value, String> {
            $f(args)
        }
        wrapper as BuiltinFn
    }};
}

impl Registry {
    /// The functions shoal ships with.
    pub fn standard() -> Registry {
        let mut r = Registry::default();
        r.register("noop", "noop(...) -> null: ignores its arguments (they are still fetched)", pure!(noop));
        r.register("identity", "identity(x) -> x", pure!(identity));
        r.register("sum", "sum(...) -> the sum of all numbers; array arguments are flattened one level", pure!(sum));
        r.register(
            "product",
            "product(...) -> the product of all numbers; array arguments are flattened one level",
            pure!(product),
        );
        r.register("add", "add(a, b) -> a + b", pure!(add));
        r.register("mul", "mul(a, b) -> a * b", pure!(mul));
        r.register("sleep", "sleep(seconds) -> seconds, after sleeping that long (at most a day)", pure!(sleep));
        r.register("delay", "delay(x, seconds) -> x, after sleeping that long (at most a day)", pure!(delay));
        r.register(
            "burn",
            "burn(ms) -> iterations of a busy arithmetic loop run for about ms milliseconds",
            pure!(burn),
        );
        r.register("fib", "fib(n) -> the n-th Fibonacci number, computed naively (n <= 40)", pure!(fib));
        r.register("bytes", "bytes(n) -> n raw bytes, byte i being (i * 31 + 7) % 251 (n <= 4 GiB)", pure!(bytes));
        r.register(
            "checksum",
            "checksum(x) -> {len, crc32} of raw bytes, or of the compact JSON text of a JSON value",
            pure!(checksum),
        );
        r.register("len", "len(x) -> length of bytes, string (characters), array or object", pure!(len));
        r.register("fail", "fail(message?) -> always fails with message, or \"fail called\"", pure!(fail));
        r.register("range", "range(n) -> [0, 1, ..., n-1] (n <= 10,000,000)", pure!(range));
        r.register("concat", "concat(a, b, ...) -> the arrays concatenated", pure!(concat));
        r.register(
            "load_shard",
            "load_shard(shard, n) -> {x, y} with x = shard*n + i and y = 3x + 1 for i in 0..n",
            pure!(load_shard),
        );
        r.register(
            "standardize",
            "standardize({x, y}) -> {x / 100, y}: a fixed scale, so y = 300x + 1 after it",
            pure!(standardize),
        );
        r.register(
            "train_linear",
            "train_linear(data, ...) -> {slope, intercept, n}: least squares over all the datasets",
            pure!(train_linear),
        );
        r.register(
            "evaluate",
            "evaluate(model, data) -> {mse, n}: mean squared error of the model on data",
            pure!(evaluate),
        );
        // Builtins that use their TaskContext (nested tasks, the node they run on).
        r.register("spawn_sum", "spawn_sum(n) -> 0 + 1 + ... + n-1, summed from n nested identity tasks", spawn_sum);
        r.register(
            "whereami",
            "whereami(...) -> {node, pid, attempt}: where this task ran (arguments ignored)",
            whereami,
        );
        r.register(
            ENTRYPOINT_BUILTIN,
            "entrypoint(command, env) -> {exit_code}: runs `sh -c command` (or the plain command, without a shell) \
             as an entrypoint job's driver, its output streamed to the job's log",
            entrypoint,
        );
        r.register(
            "abandoned_get",
            "abandoned_get(wait, hold) -> null: submits a nested sleep, waits `wait` seconds for it in a `get` it \
             then gives up by dropping the call, and works on for `hold` seconds",
            abandoned_get,
        );
        r.register(
            "submit_and_sleep",
            "submit_and_sleep(name, args, seconds) -> null: submits a nested `builtin:name` task given the array args, \
             then sleeps holding its reference without waiting for it (or lending its resources)",
            submit_and_sleep,
        );
        r.register(
            "mark",
            "mark(dir, key, seconds) -> {key, attempt, pid}: creates DIR/KEY.ATTEMPT.started, sleeps, then creates \
             DIR/KEY.ATTEMPT.done, so a test sees which attempts ran and finished",
            mark,
        );
        r.register(
            "crash_once",
            "crash_once() -> attempt: kills its own worker on the first attempt (for fault tests)",
            crash_once,
        );
        r
    }

    /// Adds `func` under `name`, replacing any builtin of that name.
    pub fn register(&mut self, name: &'static str, doc: &'static str, func: BuiltinFn) {
        self.builtins.insert(name, Builtin { name, doc, func });
    }

    /// The builtin named `name`.
    pub fn get(&self, name: &str) -> Option<&Builtin> {
        self.builtins.get(name)
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.builtins.keys().copied()
    }
}

fn spawn_sum(ctx: &mut TaskContext, args: Vec<Value>) -> Result<Value, String> {
    arity("spawn_sum", &args, 1)?;
    let n = args
        .first()
        .and_then(|v| v.as_json())
        .and_then(Json::as_u64)
        .ok_or("spawn_sum: n must be a non-negative integer")?;
    if n > 100_000 {
        return Err(format!("spawn_sum: n = {n} is more than 100,000"));
    }
    let mut refs = Vec::with_capacity(n as usize);
    for i in 0..n {
        refs.push(ctx.submit(crate::client::Task::builtin("identity").arg(i)).map_err(|e| format!("spawn_sum: {e}"))?);
    }
    let mut total: u64 = 0;
    for v in ctx.get_many(&refs, None).map_err(|e| format!("spawn_sum: {e}"))? {
        let v = v.map_err(|e| format!("spawn_sum: {e}"))?;
        total += v.as_json().and_then(Json::as_u64).ok_or("spawn_sum: a nested task returned a non-integer")?;
    }
    Ok(Value::Json(json!(total)))
}

fn submit_and_sleep(ctx: &mut TaskContext, args: Vec<Value>) -> Result<Value, String> {
    const F: &str = "submit_and_sleep";
    arity(F, &args, 3)?;
    let name =
        args[0].as_json().and_then(Json::as_str).ok_or("submit_and_sleep: argument 0 must be a builtin's name")?;
    let inner = array_arg(F, 1, &args[1])?;
    let seconds = f64_arg(F, 2, &args[2], 0.0, MAX_SLEEP_SECONDS)?;
    let task = crate::client::Task::builtin(name).args(inner.iter().cloned());
    let held = ctx.submit(task).map_err(|e| format!("submit_and_sleep: {e}"))?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    drop(held);
    Ok(Value::Json(Json::Null))
}

fn abandoned_get(ctx: &mut TaskContext, args: Vec<Value>) -> Result<Value, String> {
    const F: &str = "abandoned_get";
    arity(F, &args, 2)?;
    let wait = f64_arg(F, 0, &args[0], 0.0, MAX_SLEEP_SECONDS)?;
    let hold = f64_arg(F, 1, &args[1], 0.0, MAX_SLEEP_SECONDS)?;
    let nested = crate::client::Task::builtin("sleep").arg(wait + hold + 1.0);
    let r = ctx.submit(nested).map_err(|e| format!("{F}: {e}"))?;
    if let Some(Err(e)) = ctx.get_giving_up_after(&r, Duration::from_secs_f64(wait)) {
        return Err(format!("{F}: {e}"));
    }
    std::thread::sleep(Duration::from_secs_f64(hold));
    Ok(Value::Json(Json::Null))
}

fn mark(ctx: &mut TaskContext, args: Vec<Value>) -> Result<Value, String> {
    const F: &str = "mark";
    arity(F, &args, 3)?;
    let dir = args[0].as_json().and_then(Json::as_str).ok_or("mark: argument 0 must be a directory's path")?;
    let dir = std::path::Path::new(dir);
    if !dir.is_absolute() || !dir.is_dir() {
        return Err(format!("mark: {} is not an absolute path to a directory", dir.display()));
    }
    let key = match json_arg(F, 1, &args[1])? {
        Json::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {
            s.clone()
        }
        Json::Number(n) if n.is_u64() => n.to_string(),
        other => {
            return Err(format!(
                "mark: argument 1 is {}, not a key (a non-negative integer or a word of letters, digits, - and _)",
                describe_json(other)
            ))
        }
    };
    let seconds = f64_arg(F, 2, &args[2], 0.0, MAX_SLEEP_SECONDS)?;
    let attempt = ctx.attempt();
    let touch = |stage: &str| {
        let path = dir.join(format!("{key}.{attempt}.{stage}"));
        std::fs::write(&path, b"").map_err(|e| format!("mark: cannot create {}: {e}", path.display()))
    };
    touch("started")?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    touch("done")?;
    Ok(Value::Json(json!({ "key": args[1].as_json(), "attempt": attempt, "pid": std::process::id() })))
}

fn whereami(ctx: &mut TaskContext, _args: Vec<Value>) -> Result<Value, String> {
    Ok(Value::Json(json!({
        "node": std::env::var("SHOAL_NODE_ID").unwrap_or_default(),
        "pid": std::process::id(),
        "attempt": ctx.attempt(),
    })))
}

fn crash_once(ctx: &mut TaskContext, _args: Vec<Value>) -> Result<Value, String> {
    if ctx.attempt() == 0 {
        // Dies the way an out-of-memory kill would look to the raylet.
        std::process::abort();
    }
    Ok(Value::Json(json!(ctx.attempt())))
}

/// Name of the builtin that runs an entrypoint job's driver command.
pub const ENTRYPOINT_BUILTIN: &str = "entrypoint";
/// Most driver output bytes sent to the GCS in one append.
const ENTRYPOINT_LOG_CHUNK: usize = 64 * 1024;
/// How often a driver asks the GCS whether its job was stopped (and flushes output).
const ENTRYPOINT_POLL: Duration = Duration::from_millis(200);
/// Grace between SIGTERM and SIGKILL when a job is stopped.
const ENTRYPOINT_GRACE: Duration = Duration::from_secs(2);
/// Output kept for the error message of a failing driver.
const ENTRYPOINT_TAIL: usize = 2048;

/// The shell an entrypoint's command runs under, when the worker has one.
const ENTRYPOINT_SHELL: &str = "/bin/sh";
/// How long output is still read after the command ended and its group was
/// killed; only a process that left the group can hold the pipes longer.
const ENTRYPOINT_DRAIN: Duration = Duration::from_secs(2);

/// Runs an entrypoint job's command in its own process group, with
/// `SHOAL_JOB_ID` set (the worker's environment already names the raylet in
/// `SHOAL_ADDRESS` and the GCS in `SHOAL_GCS_ADDRESS`). Its stdout and stderr
/// go to the job's log at the GCS; the GCS's answer says when the job was
/// stopped, and then the process group is terminated. Output is dropped (and
/// the command keeps running) when the GCS cannot be reached.
///
/// The group dies as a whole when the command ends, when the job is stopped,
/// and when this worker dies (see [`crate::process::ProcessGroup`]): nothing
/// the command started outlives its job.
fn entrypoint(ctx: &mut TaskContext, args: Vec<Value>) -> Result<Value, String> {
    use std::io::Read;
    arity("entrypoint", &args, 2)?;
    let command = args[0].as_json().and_then(Json::as_str).ok_or("entrypoint: the command must be a string")?;
    let env = match args[1].as_json() {
        Some(Json::Object(m)) => m.clone(),
        Some(Json::Null) => Default::default(),
        _ => return Err("entrypoint: env must be an object of strings".into()),
    };
    let job = ctx.task_id().map(|t| t.job()).ok_or("entrypoint: not running a task")?;
    let argv = entrypoint_argv(command, std::path::Path::new(ENTRYPOINT_SHELL).exists())?;
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    for (k, v) in &env {
        let v = v.as_str().ok_or_else(|| format!("entrypoint: env `{k}` is not a string"))?;
        cmd.env(k, v);
    }
    cmd.env("SHOAL_JOB_ID", job.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    crate::process::ProcessGroup::prepare(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("entrypoint: cannot start `{}`: {e}", argv.join(" ")))?;
    let group = match crate::process::ProcessGroup::watch(child.id()) {
        Ok(g) => g,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("entrypoint: cannot watch the process group of `{command}`: {e}"));
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
    let pipes: Vec<Box<dyn Read + Send>> = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for mut pipe in pipes {
        let tx = tx.clone();
        // Not joined: a process that left the group may hold the pipe open
        // after the job ended; the thread ends with that process.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("entrypoint: cannot start a runtime: {e}"))?;
    let gcs_addr = std::env::var("SHOAL_GCS_ADDRESS").unwrap_or_default();
    let token = crate::auth::from_env().ok().flatten();
    let mut gcs = runtime.block_on(crate::raylet::connect_gcs(&gcs_addr, token.as_ref(), Duration::from_secs(5))).ok();
    let mut tail: Vec<u8> = Vec::new();
    let mut stopped_at: Option<Instant> = None;
    let mut killed = false;
    let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
    let mut done = false;
    while !done {
        let mut out = Vec::new();
        match rx.recv_timeout(ENTRYPOINT_POLL) {
            Ok(chunk) => out.extend(chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => done = true,
        }
        while out.len() < ENTRYPOINT_LOG_CHUNK {
            match rx.try_recv() {
                Ok(chunk) => out.extend(chunk),
                Err(_) => break,
            }
        }
        tail.extend_from_slice(&out);
        if tail.len() > ENTRYPOINT_TAIL {
            tail.drain(..tail.len() - ENTRYPOINT_TAIL);
        }
        if let Some(g) = gcs.as_mut() {
            let req = shoal_proto::v1::AppendJobLogRequest { job_id: job.0, data: out.into() };
            if let Ok(reply) = runtime.block_on(g.append_job_log(req)) {
                if reply.into_inner().stop && stopped_at.is_none() {
                    stopped_at = Some(Instant::now());
                    group.signal(libc::SIGTERM);
                }
            }
        }
        if let Some(at) = stopped_at {
            if !killed && at.elapsed() >= ENTRYPOINT_GRACE {
                killed = true;
                group.signal(libc::SIGKILL);
            }
        }
        // The job ends with its command, not with the last holder of its
        // pipes: what it left running in the background goes with it (after
        // the grace, when the job was stopped).
        if exited.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                if stopped_at.is_none() {
                    group.signal(libc::SIGKILL);
                }
                exited = Some((status, Instant::now()));
            }
        }
        let ended_at = exited.map(|(_, at)| stopped_at.map_or(at, |stop| at.max(stop + ENTRYPOINT_GRACE)));
        if ended_at.is_some_and(|at| at.elapsed() >= ENTRYPOINT_DRAIN) {
            done = true;
        }
    }
    let status = match exited {
        Some((status, _)) => status,
        None => child.wait().map_err(|e| format!("entrypoint: waiting for the command: {e}"))?,
    };
    drop(group);
    if stopped_at.is_some() {
        return Err("entrypoint: the job was stopped".into());
    }
    if status.success() {
        return Ok(Value::Json(json!({ "exit_code": 0 })));
    }
    let code = status.code().map(|c| format!("exit code {c}")).unwrap_or_else(|| status.to_string());
    Err(format!(
        "entrypoint: `{command}` failed with {code}; last output:\n{}",
        String::from_utf8_lossy(&tail).trim_end()
    ))
}

/// Shell words whose meaning is lost when the command is exec'd directly:
/// reserved words and builtins that change the shell itself.
const SHELL_ONLY_WORDS: &[&str] = &[
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then", "until", "while",
    ".", ":", "alias", "bg", "break", "cd", "command", "continue", "eval", "exec", "exit", "export", "fg", "getopts",
    "hash", "jobs", "local", "read", "readonly", "return", "set", "shift", "source", "times", "trap", "type", "ulimit",
    "umask", "unalias", "unset", "wait",
];

/// The argv that runs an entrypoint's `command`. With a shell, a plain
/// command (words only) is `exec`'d by it, so no shell process stays between
/// the job and its program; anything else runs as `sh -c command`. Without a
/// shell, a plain command runs directly and anything needing shell syntax is
/// an error that says what needs it.
fn entrypoint_argv(command: &str, have_shell: bool) -> Result<Vec<String>, String> {
    let words = plain_words(command).and_then(|w| match w.first() {
        None => Err("no program is named".to_string()),
        Some(first) if SHELL_ONLY_WORDS.contains(&first.as_str()) => Err(format!("`{first}` is a shell word")),
        Some(_) => Ok(w),
    });
    match (words, have_shell) {
        _ if command.trim().is_empty() => Err("entrypoint: the command is empty".into()),
        (Ok(_), true) => Ok(vec![ENTRYPOINT_SHELL.into(), "-c".into(), format!("exec {command}")]),
        (Ok(words), false) => Ok(words),
        (Err(_), true) => Ok(vec![ENTRYPOINT_SHELL.into(), "-c".into(), command.into()]),
        (Err(why), false) => Err(format!(
            "entrypoint: `{command}` needs a shell ({why}), and this worker has no {ENTRYPOINT_SHELL}; give a plain \
             command (a program and its arguments) or use an image with a shell"
        )),
    }
}

/// Splits a plain command line into words as a POSIX shell would: blanks
/// separate words, `'...'` is literal, `"..."` keeps all but `\"`, `\\`,
/// `\$` and `` \` `` literal, and a backslash outside quotes escapes the
/// next character. Shell syntax beyond that (operators, redirections,
/// expansions, globs, comments, assignments) is an `Err` naming it.
fn plain_words(command: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word is under way (an empty quoted word is still a word).
    let mut in_word = false;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("an unterminated '".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("an unterminated \"".into()),
                        },
                        Some(c @ ('$' | '`')) => return Err(format!("the expansion `{c}`")),
                        Some(c) => word.push(c),
                        None => return Err("an unterminated \"".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err("a trailing \\".into()),
            },
            '\n' | ';' | '&' | '|' => return Err(format!("the operator `{}`", c.escape_default())),
            '<' | '>' => return Err(format!("the redirection `{c}`")),
            '(' | ')' => return Err(format!("the subshell `{c}`")),
            '$' | '`' => return Err(format!("the expansion `{c}`")),
            '*' | '?' | '[' => return Err(format!("the pattern `{c}`")),
            '#' | '~' if !in_word => return Err(format!("`{c}` at the start of a word")),
            '=' if words.is_empty()
                && !word.is_empty()
                && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !word.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                return Err(format!("the assignment `{word}=`"));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Whether `name` is in [`Registry::standard`]; used to check job specs
/// before they run.
pub fn is_standard_builtin(name: &str) -> bool {
    static STANDARD: OnceLock<Registry> = OnceLock::new();
    STANDARD.get_or_init(Registry::standard).get(name).is_some()
}

// ---------------------------------------------------------------------------
// Argument helpers. Every message starts with the builtin's name.

/// A JSON number kept as an integer while it is one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// A short description of a value for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Bytes(b) => format!("{} raw bytes", b.len()),
        Value::Json(j) => describe_json(j),
    }
}

fn describe_json(j: &Json) -> String {
    let text = j.to_string();
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

fn arity(f: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() == n {
        Ok(())
    } else {
        let s = if n == 1 { "" } else { "s" };
        Err(format!("{f}: takes exactly {n} argument{s}, got {}", args.len()))
    }
}

fn json_arg<'a>(f: &str, i: usize, v: &'a Value) -> Result<&'a Json, String> {
    match v {
        Value::Json(j) => Ok(j),
        Value::Bytes(b) => Err(format!("{f}: argument {i} is {} raw bytes, not JSON", b.len())),
    }
}

fn json_num(n: &serde_json::Number) -> Option<Num> {
    if let Some(i) = n.as_i64() {
        Some(Num::Int(i))
    } else if n.is_u64() {
        // Above i64::MAX: no integer result could hold it.
        None
    } else {
        n.as_f64().filter(|f| f.is_finite()).map(Num::Float)
    }
}

fn num_arg(f: &str, what: &str, v: &Json) -> Result<Num, String> {
    match v {
        Json::Number(n) => json_num(n).ok_or_else(|| format!("{f}: {what} is {n}, outside the 64-bit integer range")),
        other => Err(format!("{f}: {what} is {}, not a number", describe_json(other))),
    }
}

/// An integer argument in `min..=max`; `3.0` counts as 3.
fn int_arg(f: &str, i: usize, v: &Value, min: i64, max: i64) -> Result<i64, String> {
    let what = format!("argument {i}");
    let n = match num_arg(f, &what, json_arg(f, i, v)?)? {
        Num::Int(n) => n,
        Num::Float(x) if x.fract() == 0.0 && x >= min as f64 && x <= max as f64 => x as i64,
        Num::Float(x) => return Err(format!("{f}: {what} is {x}, not an integer")),
    };
    if n < min || n > max {
        return Err(format!("{f}: {what} is {n}; it must be between {min} and {max}"));
    }
    Ok(n)
}

/// A number argument in `min..=max`.
fn f64_arg(f: &str, i: usize, v: &Value, min: f64, max: f64) -> Result<f64, String> {
    let what = format!("argument {i}");
    let x = num_arg(f, &what, json_arg(f, i, v)?)?.as_f64();
    if x < min || x > max {
        return Err(format!("{f}: {what} is {x}; it must be between {min} and {max}"));
    }
    Ok(x)
}

/// All numbers among the arguments, arrays flattened one level.
fn flat_numbers(f: &str, args: &[Value]) -> Result<Vec<Num>, String> {
    let mut out = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match json_arg(f, i, a)? {
            Json::Array(items) => {
                for (k, item) in items.iter().enumerate() {
                    out.push(num_arg(f, &format!("argument {i}, item {k},"), item)?);
                }
            }
            other => out.push(num_arg(f, &format!("argument {i}"), other)?),
        }
    }
    Ok(out)
}

/// Folds numbers with integer arithmetic while they are all integers
/// (overflow is an error), in floating point otherwise.
fn fold(
    f: &str,
    nums: &[Num],
    unit: i64,
    int_op: fn(i64, i64) -> Option<i64>,
    float_op: fn(f64, f64) -> f64,
) -> Result<Value, String> {
    if nums.iter().all(|n| matches!(n, Num::Int(_))) {
        let mut acc = unit;
        for n in nums {
            if let Num::Int(i) = n {
                acc = int_op(acc, *i).ok_or_else(|| format!("{f}: integer overflow"))?;
            }
        }
        return Ok(Value::Json(Json::from(acc)));
    }
    let acc = nums.iter().fold(unit as f64, |acc, n| float_op(acc, n.as_f64()));
    float_value(f, acc)
}

fn float_value(f: &str, x: f64) -> Result<Value, String> {
    serde_json::Number::from_f64(x)
        .map(|n| Value::Json(Json::Number(n)))
        .ok_or_else(|| format!("{f}: the result is not a finite number"))
}

fn array_arg<'a>(f: &str, i: usize, v: &'a Value) -> Result<&'a Vec<Json>, String> {
    match json_arg(f, i, v)? {
        Json::Array(a) => Ok(a),
        other => Err(format!("{f}: argument {i} is {}, not an array", describe_json(other))),
    }
}

// ---------------------------------------------------------------------------
// The standard builtins, as pure functions.

fn noop(_args: Vec<Value>) -> Result<Value, String> {
    Ok(Value::Json(Json::Null))
}

fn identity(args: Vec<Value>) -> Result<Value, String> {
    arity("identity", &args, 1)?;
    args.into_iter().next().ok_or_else(|| "identity: takes exactly 1 argument, got 0".to_string())
}

fn sum(args: Vec<Value>) -> Result<Value, String> {
    fold("sum", &flat_numbers("sum", &args)?, 0, i64::checked_add, |a, b| a + b)
}

fn product(args: Vec<Value>) -> Result<Value, String> {
    fold("product", &flat_numbers("product", &args)?, 1, i64::checked_mul, |a, b| a * b)
}

fn two_numbers(f: &str, args: &[Value]) -> Result<[Num; 2], String> {
    arity(f, args, 2)?;
    let mut out = [Num::Int(0); 2];
    for ((i, a), slot) in args.iter().enumerate().zip(out.iter_mut()) {
        *slot = num_arg(f, &format!("argument {i}"), json_arg(f, i, a)?)?;
    }
    Ok(out)
}

fn add(args: Vec<Value>) -> Result<Value, String> {
    fold("add", &two_numbers("add", &args)?, 0, i64::checked_add, |a, b| a + b)
}

fn mul(args: Vec<Value>) -> Result<Value, String> {
    fold("mul", &two_numbers("mul", &args)?, 1, i64::checked_mul, |a, b| a * b)
}

/// Longest `sleep`, and longest `burn` in milliseconds / 1000: a day.
const MAX_SLEEP_SECONDS: f64 = 86_400.0;

fn sleep(args: Vec<Value>) -> Result<Value, String> {
    arity("sleep", &args, 1)?;
    let seconds = args.first().ok_or("sleep: takes exactly 1 argument, got 0")?;
    let s = f64_arg("sleep", 0, seconds, 0.0, MAX_SLEEP_SECONDS)?;
    std::thread::sleep(Duration::from_secs_f64(s));
    Ok(seconds.clone())
}

fn delay(args: Vec<Value>) -> Result<Value, String> {
    arity("delay", &args, 2)?;
    let mut it = args.into_iter();
    let (Some(x), Some(seconds)) = (it.next(), it.next()) else {
        return Err("delay: takes exactly 2 arguments".to_string());
    };
    let s = f64_arg("delay", 1, &seconds, 0.0, MAX_SLEEP_SECONDS)?;
    std::thread::sleep(Duration::from_secs_f64(s));
    Ok(x)
}

fn burn(args: Vec<Value>) -> Result<Value, String> {
    arity("burn", &args, 1)?;
    let ms = args.first().ok_or("burn: takes exactly 1 argument, got 0")?;
    let ms = f64_arg("burn", 0, ms, 0.0, MAX_SLEEP_SECONDS * 1000.0)?;
    let deadline = Instant::now() + Duration::from_secs_f64(ms / 1000.0);
    // A 64-bit LCG with an xorshift, checked against the clock every batch;
    // black_box keeps the optimiser from skipping the work.
    const BATCH: u64 = 4096;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut iterations: u64 = 0;
    while Instant::now() < deadline {
        for _ in 0..BATCH {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            state ^= state >> 29;
        }
        state = std::hint::black_box(state);
        iterations += BATCH;
    }
    Ok(Value::Json(Json::from(iterations)))
}

/// Largest `fib` argument: fib(40) takes about a second, deliberately slow.
const MAX_FIB: i64 = 40;

fn fib(args: Vec<Value>) -> Result<Value, String> {
    arity("fib", &args, 1)?;
    let n = int_arg("fib", 0, args.first().ok_or("fib: takes exactly 1 argument, got 0")?, 0, MAX_FIB)?;
    fn naive(n: u32) -> u64 {
        if n < 2 {
            u64::from(n)
        } else {
            naive(n - 1) + naive(n - 2)
        }
    }
    Ok(Value::Json(Json::from(naive(u32::try_from(n).unwrap_or(0)))))
}

/// Largest `bytes` result: 4 GiB.
const MAX_BYTES: i64 = 4 << 30;
/// `bytes` repeats with this period: byte i is (i * 31 + 7) % 251.
const BYTES_PERIOD: usize = 251;

fn bytes(args: Vec<Value>) -> Result<Value, String> {
    arity("bytes", &args, 1)?;
    let n = int_arg("bytes", 0, args.first().ok_or("bytes: takes exactly 1 argument, got 0")?, 0, MAX_BYTES)?;
    let n = usize::try_from(n).map_err(|_| format!("bytes: {n} bytes do not fit in memory on this machine"))?;
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(n).map_err(|_| format!("bytes: cannot allocate {n} bytes"))?;
    out.extend((0..BYTES_PERIOD.min(n)).map(|i| ((i * 31 + 7) % BYTES_PERIOD) as u8));
    // Doubling keeps the length a multiple of the period until the last copy,
    // so the copied prefix always continues the pattern.
    while out.len() < n {
        let take = out.len().min(n - out.len());
        out.extend_from_within(..take);
    }
    Ok(Value::Bytes(Bytes::from(out)))
}

fn checksum(args: Vec<Value>) -> Result<Value, String> {
    arity("checksum", &args, 1)?;
    let (len, crc) = match args.first() {
        Some(Value::Bytes(b)) => (b.len(), crc32fast::hash(b)),
        Some(Value::Json(j)) => {
            let text = serde_json::to_vec(j).map_err(|e| format!("checksum: cannot encode argument 0: {e}"))?;
            (text.len(), crc32fast::hash(&text))
        }
        None => return Err("checksum: takes exactly 1 argument, got 0".to_string()),
    };
    Ok(Value::Json(json!({ "len": len, "crc32": format!("{crc:08x}") })))
}

fn len(args: Vec<Value>) -> Result<Value, String> {
    arity("len", &args, 1)?;
    let n = match args.first() {
        Some(Value::Bytes(b)) => b.len(),
        Some(Value::Json(Json::String(s))) => s.chars().count(),
        Some(Value::Json(Json::Array(a))) => a.len(),
        Some(Value::Json(Json::Object(o))) => o.len(),
        Some(other) => {
            return Err(format!("len: argument 0 is {}, not bytes, a string, an array or an object", describe(other)))
        }
        None => return Err("len: takes exactly 1 argument, got 0".to_string()),
    };
    Ok(Value::Json(Json::from(n)))
}

fn fail(args: Vec<Value>) -> Result<Value, String> {
    match args.as_slice() {
        [] => Err("fail called".to_string()),
        [Value::Json(Json::String(s))] => Err(s.clone()),
        [other] => Err(describe(other)),
        more => Err(format!("fail: takes at most 1 argument, got {}", more.len())),
    }
}

/// Largest `range`.
const MAX_RANGE: i64 = 10_000_000;

fn range(args: Vec<Value>) -> Result<Value, String> {
    arity("range", &args, 1)?;
    let n = int_arg("range", 0, args.first().ok_or("range: takes exactly 1 argument, got 0")?, 0, MAX_RANGE)?;
    Ok(Value::Json(Json::Array((0..n).map(Json::from).collect())))
}

fn concat(args: Vec<Value>) -> Result<Value, String> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        out.extend(array_arg("concat", i, a)?.iter().cloned());
    }
    Ok(Value::Json(Json::Array(out)))
}

// --- the example pipeline: noise-free linear data, so results are exact.

/// Largest shard number and shard size of `load_shard`; both bounds keep
/// every x and y an integer that f64 holds exactly.
const MAX_SHARD: i64 = 1_000_000;

fn load_shard(args: Vec<Value>) -> Result<Value, String> {
    const F: &str = "load_shard";
    arity(F, &args, 2)?;
    let [shard, n] = args.as_slice() else {
        return Err(format!("{F}: takes exactly 2 arguments, got {}", args.len()));
    };
    let shard = int_arg(F, 0, shard, 0, MAX_SHARD)?;
    let n = int_arg(F, 1, n, 0, MAX_SHARD)?;
    let xs: Vec<i64> = (0..n).map(|i| shard * n + i).collect();
    let ys: Vec<i64> = xs.iter().map(|x| 3 * x + 1).collect();
    Ok(Value::Json(json!({ "x": xs, "y": ys })))
}

/// A dataset `{x: [..], y: [..]}` with as many x as y.
fn dataset(f: &str, i: usize, v: &Value) -> Result<(Vec<f64>, Vec<f64>), String> {
    let Json::Object(map) = json_arg(f, i, v)? else {
        return Err(format!("{f}: argument {i} is {}, not a dataset {{x: [...], y: [...]}}", describe(v)));
    };
    let column = |key: &str| -> Result<Vec<f64>, String> {
        let Some(Json::Array(items)) = map.get(key) else {
            return Err(format!("{f}: argument {i} has no `{key}` array"));
        };
        items
            .iter()
            .enumerate()
            .map(|(k, item)| num_arg(f, &format!("argument {i}, {key}[{k}],"), item).map(Num::as_f64))
            .collect()
    };
    let (xs, ys) = (column("x")?, column("y")?);
    if xs.len() != ys.len() {
        return Err(format!("{f}: argument {i} has {} x values but {} y values", xs.len(), ys.len()));
    }
    Ok((xs, ys))
}

/// `standardize` divides x by this fixed scale.
const STANDARDIZE_SCALE: f64 = 100.0;

fn standardize(args: Vec<Value>) -> Result<Value, String> {
    const F: &str = "standardize";
    arity(F, &args, 1)?;
    let data = args.first().ok_or("standardize: takes exactly 1 argument, got 0")?;
    let (xs, _) = dataset(F, 0, data)?;
    let ys = data.as_json().and_then(|d| d.get("y")).cloned().unwrap_or(Json::Null);
    let xs: Vec<f64> = xs.iter().map(|x| x / STANDARDIZE_SCALE).collect();
    Ok(Value::Json(json!({ "x": xs, "y": ys })))
}

fn train_linear(args: Vec<Value>) -> Result<Value, String> {
    const F: &str = "train_linear";
    if args.is_empty() {
        return Err(format!("{F}: needs at least 1 dataset"));
    }
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (i, a) in args.iter().enumerate() {
        let (x, y) = dataset(F, i, a)?;
        xs.extend(x);
        ys.extend(y);
    }
    let n = xs.len();
    if n < 2 {
        return Err(format!("{F}: needs at least 2 points, got {n}"));
    }
    // Centred sums: exact for noise-free data and stable for large x.
    let (mean_x, mean_y) = (xs.iter().sum::<f64>() / n as f64, ys.iter().sum::<f64>() / n as f64);
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (x, y) in xs.iter().zip(&ys) {
        sxx += (x - mean_x) * (x - mean_x);
        sxy += (x - mean_x) * (y - mean_y);
    }
    if sxx == 0.0 {
        return Err(format!("{F}: every x is the same, so no slope can be fitted"));
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    if !slope.is_finite() || !intercept.is_finite() {
        return Err(format!("{F}: the fit is not a finite number"));
    }
    Ok(Value::Json(json!({ "slope": slope, "intercept": intercept, "n": n })))
}

fn evaluate(args: Vec<Value>) -> Result<Value, String> {
    const F: &str = "evaluate";
    arity(F, &args, 2)?;
    let [model, data] = args.as_slice() else {
        return Err(format!("{F}: takes exactly 2 arguments, got {}", args.len()));
    };
    let model_json = json_arg(F, 0, model)?;
    let param = |key: &str| -> Result<f64, String> {
        match model_json.get(key) {
            Some(v) => num_arg(F, &format!("argument 0, `{key}`,"), v).map(Num::as_f64),
            None => Err(format!("{F}: argument 0 has no `{key}`; expected a model {{slope, intercept}}")),
        }
    };
    let (slope, intercept) = (param("slope")?, param("intercept")?);
    let (xs, ys) = dataset(F, 1, data)?;
    if xs.is_empty() {
        return Err(format!("{F}: argument 1 has no points"));
    }
    let sse: f64 = xs.iter().zip(&ys).map(|(x, y)| (slope * x + intercept - y).powi(2)).sum();
    let mse = sse / xs.len() as f64;
    if !mse.is_finite() {
        return Err(format!("{F}: the error is not a finite number"));
    }
    Ok(Value::Json(json!({ "mse": mse, "n": xs.len() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(v: Json) -> Value {
        Value::Json(v)
    }

    fn ok(r: Result<Value, String>) -> Json {
        match r {
            Ok(Value::Json(v)) => v,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    fn err(r: Result<Value, String>) -> String {
        r.expect_err("expected an error")
    }

    fn words(command: &str) -> Vec<String> {
        plain_words(command).unwrap_or_else(|e| panic!("{command:?}: {e}"))
    }

    #[test]
    fn plain_commands_split_into_words_as_a_shell_would() {
        assert_eq!(words("sleep 1000"), ["sleep", "1000"]);
        assert_eq!(words("  a\tb  "), ["a", "b"]);
        assert_eq!(words("echo 'a b' \"c d\" e\\ f ''"), ["echo", "a b", "c d", "e f", ""]);
        assert_eq!(words("echo 'it''s' \"say \\\"hi\\\"\" a\\$b"), ["echo", "its", "say \"hi\"", "a$b"]);
        assert_eq!(words("prog --opt=1 x=2 a#b a~b"), ["prog", "--opt=1", "x=2", "a#b", "a~b"]);
        assert_eq!(words("'$HOME' \"a'b\""), ["$HOME", "a'b"]);
    }

    #[test]
    fn shell_syntax_is_named_not_split() {
        for (command, needle) in [
            ("sleep 1; echo x", "`;`"),
            ("a | b", "`|`"),
            ("a && b", "`&`"),
            ("a &", "`&`"),
            ("a > out", "redirection `>`"),
            ("a < in", "redirection `<`"),
            ("(a)", "subshell"),
            ("echo $HOME", "expansion `$`"),
            ("echo \"$HOME\"", "expansion `$`"),
            ("echo `date`", "expansion"),
            ("ls *.txt", "pattern `*`"),
            ("a\nb", "operator"),
            ("a # comment", "`#` at the start"),
            ("cd ~", "`~` at the start"),
            ("FOO=1 prog", "assignment `FOO=`"),
            ("echo 'open", "unterminated '"),
            ("echo \"open", "unterminated \""),
            ("echo \\", "trailing"),
        ] {
            let e = plain_words(command).expect_err(command);
            assert!(e.contains(needle), "{command:?}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn entrypoints_exec_plain_commands_and_need_a_shell_only_for_shell_syntax() {
        let sh = |c: &str| vec![ENTRYPOINT_SHELL.to_string(), "-c".into(), c.into()];
        // With a shell: a plain command replaces the shell; anything else runs under it.
        assert_eq!(entrypoint_argv("sleep 1000", true).unwrap(), sh("exec sleep 1000"));
        assert_eq!(entrypoint_argv("sleep 1000; echo x", true).unwrap(), sh("sleep 1000; echo x"));
        assert_eq!(entrypoint_argv("exit 3", true).unwrap(), sh("exit 3"));
        assert_eq!(entrypoint_argv("cd /tmp", true).unwrap(), sh("cd /tmp"));
        // Without one: plain commands run directly, the rest is refused with the reason.
        assert_eq!(entrypoint_argv("python3 -c 'print(1)'", false).unwrap(), ["python3", "-c", "print(1)"]);
        let e = entrypoint_argv("a | b", false).unwrap_err();
        assert!(e.contains("needs a shell") && e.contains("`|`") && e.contains(ENTRYPOINT_SHELL), "{e}");
        assert!(entrypoint_argv("exit 3", false).unwrap_err().contains("`exit` is a shell word"));
        for have_shell in [true, false] {
            assert_eq!(entrypoint_argv("  ", have_shell).unwrap_err(), "entrypoint: the command is empty");
        }
    }

    #[test]
    fn standard_registry_lists_every_builtin_with_a_doc() {
        let r = Registry::standard();
        let names: Vec<&str> = r.names().collect();
        for n in [
            "noop",
            "identity",
            "sum",
            "product",
            "add",
            "mul",
            "sleep",
            "burn",
            "fib",
            "bytes",
            "checksum",
            "len",
            "fail",
            "range",
            "concat",
            "load_shard",
            "standardize",
            "train_linear",
            "evaluate",
        ] {
            assert!(names.contains(&n), "{n} missing");
            assert!(is_standard_builtin(n));
            let b = r.get(n).unwrap();
            assert_eq!(b.name, n);
            assert!(!b.doc.is_empty() && !b.doc.contains('\n'));
        }
        assert!(!is_standard_builtin("nope"));
        assert!(r.get("nope").is_none());
    }

    #[test]
    fn register_adds_and_replaces() {
        fn seven(_: &mut TaskContext, _: Vec<Value>) -> Result<Value, String> {
            Ok(Value::Json(json!(7)))
        }
        let mut r = Registry::standard();
        r.register("seven", "seven() -> 7", seven);
        r.register("noop", "replaced", seven);
        assert_eq!(r.get("seven").unwrap().doc, "seven() -> 7");
        assert_eq!(r.get("noop").unwrap().doc, "replaced");
        assert!(!is_standard_builtin("seven"));
    }

    #[test]
    fn noop_and_identity() {
        assert_eq!(ok(noop(vec![])), Json::Null);
        assert_eq!(ok(identity(vec![j(json!({"a": 1}))])), json!({"a": 1}));
        assert_eq!(err(identity(vec![])), "identity: takes exactly 1 argument, got 0");
        assert!(err(identity(vec![j(json!(1)), j(json!(2))])).contains("got 2"));
        let b = Value::Bytes(Bytes::from_static(b"\x00"));
        assert_eq!(identity(vec![b.clone()]), Ok(b));
    }

    #[test]
    fn sum_and_product_flatten_and_keep_integers() {
        assert_eq!(ok(sum(vec![j(json!([1, 2])), j(json!(3))])), json!(6));
        assert_eq!(ok(sum(vec![])), json!(0));
        assert_eq!(ok(sum(vec![j(json!(1)), j(json!(0.5))])), json!(1.5));
        assert_eq!(ok(product(vec![j(json!([2, 3])), j(json!(4))])), json!(24));
        assert_eq!(ok(product(vec![])), json!(1));
        assert_eq!(err(sum(vec![j(json!(1)), j(json!(2)), j(json!("a"))])), "sum: argument 2 is \"a\", not a number");
        assert!(err(sum(vec![j(json!([1, [2]]))])).contains("argument 0, item 1, is [2], not a number"));
        assert_eq!(err(sum(vec![j(json!(i64::MAX)), j(json!(1))])), "sum: integer overflow");
        assert!(err(sum(vec![j(json!(u64::MAX))])).contains("outside the 64-bit integer range"));
        assert!(err(product(vec![j(json!(1e300)), j(json!(1e300))])).contains("not a finite number"));
        assert!(err(sum(vec![Value::Bytes(Bytes::from_static(b"ab"))])).contains("2 raw bytes, not JSON"));
        let many: Vec<Value> = (1..=1000).map(|i| j(json!(i))).collect();
        assert_eq!(ok(sum(many)), json!(500_500));
    }

    #[test]
    fn add_and_mul_take_two_numbers() {
        assert_eq!(ok(add(vec![j(json!(2)), j(json!(3))])), json!(5));
        assert_eq!(ok(mul(vec![j(json!(21)), j(json!(2))])), json!(42));
        assert_eq!(ok(mul(vec![j(json!(1.5)), j(json!(2))])), json!(3.0));
        assert!(err(add(vec![j(json!(1))])).contains("exactly 2 arguments, got 1"));
        assert_eq!(err(mul(vec![j(json!(1)), j(json!(null))])), "mul: argument 1 is null, not a number");
        assert_eq!(err(mul(vec![j(json!(i64::MAX)), j(json!(2))])), "mul: integer overflow");
    }

    #[test]
    fn sleep_and_burn_take_their_time_and_check_bounds() {
        let started = Instant::now();
        assert_eq!(ok(sleep(vec![j(json!(0.02))])), json!(0.02));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(err(sleep(vec![j(json!(-1))])).contains("between 0 and 86400"));
        assert!(err(sleep(vec![j(json!(86_401))])).contains("between 0 and 86400"));
        assert!(err(sleep(vec![j(json!("1"))])).contains("not a number"));
        let started = Instant::now();
        let iterations = ok(burn(vec![j(json!(20))]));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(iterations.as_u64().unwrap() > 0);
        assert_eq!(ok(burn(vec![j(json!(0))])), json!(0));
        assert!(err(burn(vec![j(json!(-5))])).contains("between"));
    }

    #[test]
    fn mark_leaves_a_file_when_it_starts_and_when_it_finishes() {
        let dir = std::env::temp_dir().join(format!("shoal-mark-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ctx = TaskContext::new(crate::ids::WorkerId::random());
        let d = j(json!(dir.to_str().unwrap()));
        let got = ok(mark(&mut ctx, vec![d.clone(), j(json!(7)), j(json!(0))]));
        assert_eq!(got["key"], json!(7));
        assert_eq!(got["attempt"], json!(0));
        assert!(dir.join("7.0.started").exists() && dir.join("7.0.done").exists());
        assert!(err(mark(&mut ctx, vec![d.clone(), j(json!("../x")), j(json!(0))])).contains("not a key"));
        assert!(err(mark(&mut ctx, vec![j(json!("relative")), j(json!(1)), j(json!(0))])).contains("absolute"));
        assert!(err(mark(&mut ctx, vec![d, j(json!(1)), j(json!(-1))])).contains("between"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fib_is_bounded() {
        assert_eq!(ok(fib(vec![j(json!(0))])), json!(0));
        assert_eq!(ok(fib(vec![j(json!(1))])), json!(1));
        assert_eq!(ok(fib(vec![j(json!(20))])), json!(6765));
        assert_eq!(ok(fib(vec![j(json!(10.0))])), json!(55));
        assert!(err(fib(vec![j(json!(41))])).contains("between 0 and 40"));
        assert!(err(fib(vec![j(json!(2.5))])).contains("not an integer"));
    }

    #[test]
    fn bytes_follow_the_pattern_and_checksum_reads_them() {
        let Ok(Value::Bytes(b)) = bytes(vec![j(json!(1000))]) else { panic!("not bytes") };
        assert_eq!(b.len(), 1000);
        assert!(b.iter().enumerate().all(|(i, &x)| x as usize == (i * 31 + 7) % 251));
        let Ok(Value::Bytes(empty)) = bytes(vec![j(json!(0))]) else { panic!("not bytes") };
        assert!(empty.is_empty());
        assert!(err(bytes(vec![j(json!(MAX_BYTES + 1))])).contains("between 0 and 4294967296"));
        assert!(err(bytes(vec![j(json!(-1))])).contains("between"));
        let sum = ok(checksum(vec![Value::Bytes(b.clone())]));
        assert_eq!(sum, json!({"len": 1000, "crc32": format!("{:08x}", crc32fast::hash(&b))}));
        assert_eq!(ok(checksum(vec![j(json!("hi"))]))["len"], json!(4));
        assert_eq!(ok(checksum(vec![j(json!([1, 2]))]))["crc32"], json!(format!("{:08x}", crc32fast::hash(b"[1,2]"))));
        assert!(err(checksum(vec![])).contains("exactly 1"));
    }

    #[test]
    fn len_measures_bytes_strings_arrays_and_objects() {
        assert_eq!(ok(len(vec![Value::Bytes(Bytes::from_static(b"abc"))])), json!(3));
        assert_eq!(ok(len(vec![j(json!("héllo"))])), json!(5));
        assert_eq!(ok(len(vec![j(json!([1, 2]))])), json!(2));
        assert_eq!(ok(len(vec![j(json!({"a": 1}))])), json!(1));
        assert_eq!(err(len(vec![j(json!(3))])), "len: argument 0 is 3, not bytes, a string, an array or an object");
    }

    #[test]
    fn fail_always_fails_with_its_message() {
        assert_eq!(err(fail(vec![])), "fail called");
        assert_eq!(err(fail(vec![j(json!("boom"))])), "boom");
        assert_eq!(err(fail(vec![j(json!({"code": 1}))])), "{\"code\":1}");
        assert!(err(fail(vec![j(json!(1)), j(json!(2))])).contains("at most 1"));
    }

    #[test]
    fn range_and_concat() {
        assert_eq!(ok(range(vec![j(json!(4))])), json!([0, 1, 2, 3]));
        assert_eq!(ok(range(vec![j(json!(0))])), json!([]));
        assert!(err(range(vec![j(json!(MAX_RANGE + 1))])).contains("between"));
        assert_eq!(ok(concat(vec![j(json!([1])), j(json!([])), j(json!([2, [3]]))])), json!([1, 2, [3]]));
        assert_eq!(ok(concat(vec![])), json!([]));
        assert_eq!(err(concat(vec![j(json!([1])), j(json!(2))])), "concat: argument 1 is 2, not an array");
    }

    #[test]
    fn pipeline_recovers_the_true_model_exactly() {
        let shards: Vec<Value> = (0..3).map(|s| load_shard(vec![j(json!(s)), j(json!(100))]).unwrap()).collect();
        assert_eq!(ok(Ok(shards[1].clone()))["x"][0], json!(100));
        assert_eq!(ok(Ok(shards[1].clone()))["y"][0], json!(301));
        let prepared: Vec<Value> = shards.into_iter().map(|d| standardize(vec![d]).unwrap()).collect();
        let model = train_linear(vec![prepared[0].clone(), prepared[1].clone()]).unwrap();
        let m = ok(Ok(model.clone()));
        assert!((m["slope"].as_f64().unwrap() - 300.0).abs() < 1e-6, "{m}");
        assert!((m["intercept"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{m}");
        assert_eq!(m["n"], json!(200));
        let score = ok(evaluate(vec![model, prepared[2].clone()]));
        assert!(score["mse"].as_f64().unwrap() < 1e-6, "{score}");
        assert_eq!(score["n"], json!(100));
    }

    #[test]
    fn pipeline_functions_reject_bad_data() {
        assert!(err(load_shard(vec![j(json!(0))])).contains("exactly 2"));
        assert!(err(load_shard(vec![j(json!(-1)), j(json!(3))])).contains("between"));
        assert_eq!(err(standardize(vec![j(json!({"x": [1]}))])), "standardize: argument 0 has no `y` array");
        assert!(err(standardize(vec![j(json!({"x": [1], "y": [1, 2]}))])).contains("1 x values but 2 y values"));
        assert!(err(standardize(vec![j(json!({"x": ["a"], "y": [1]}))])).contains("x[0], is \"a\""));
        assert!(err(train_linear(vec![])).contains("at least 1 dataset"));
        assert!(err(train_linear(vec![j(json!({"x": [1], "y": [1]}))])).contains("at least 2 points"));
        assert!(err(train_linear(vec![j(json!({"x": [1, 1], "y": [1, 2]}))])).contains("every x is the same"));
        assert!(err(evaluate(vec![j(json!({"slope": 1})), j(json!({"x": [1], "y": [1]}))])).contains("`intercept`"));
        assert!(err(evaluate(vec![j(json!({"slope": 1, "intercept": 0})), j(json!({"x": [], "y": []}))]))
            .contains("no points"));
    }
}
