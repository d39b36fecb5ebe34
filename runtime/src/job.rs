//! Job specs: a named graph of tasks, read from YAML or JSON and checked into
//! a [`JobPlan`] before anything runs.
//!
//! Reading happens in two steps, as the project's configuration does: [`parse`]
//! turns text into the permissive serde shape [`JobSpec`] (unknown fields are
//! rejected there, with the line and column the parser reports), and [`plan`]
//! validates that shape into a [`JobPlan`] the client can submit as is. `plan`
//! reports every problem it finds at once, one line each, and every line names
//! the task at fault.
//!
//! Invariants of a [`JobPlan`]: task ids are unique; every reference names a
//! task earlier in [`JobPlan::tasks`] (so submitting in order always has each
//! argument's producer submitted first) and one of its return indexes; every
//! function is a known builtin or a non-empty command line.
//!
//! ```yaml
//! name: pipeline                   # optional, "job" by default
//! tasks:
//!   - id: raw                      # unique: letters, digits, `_`, `.`, `-`; at most 63
//!     exec: [python3, -c, "print(42)"]
//!     resources: {cpu: 1, memory: 256Mi}
//!   - id: doubled
//!     function: builtin:mul
//!     args: [{ref: raw}, 2]
//!     max_retries: 3
//!     strategy: spread             # default | spread | {node: ID, soft: true} | {labels: {k: v}}
//! ```
//!
//! Arguments are JSON literals, `{ref: ID}` / `{ref: ID, index: I}` for the
//! result of another task, or `{value: X}` to pass `X` literally even when it
//! looks like a reference. Only top-level arguments are references: a
//! `{ref: ...}` nested inside an array or object is passed as plain data.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;
use shoal_proto::v1 as pb;
use thiserror::Error;

use crate::ids::NodeId;
use crate::resources::{self, ResourceSet};

/// Name a job gets when its spec gives none.
pub const DEFAULT_JOB_NAME: &str = "job";
/// Retries of a task whose spec gives no `max_retries` (ARCHITECTURE §5.6).
pub const DEFAULT_MAX_RETRIES: i32 = 3;
/// Most return values a task may declare.
pub const MAX_NUM_RETURNS: u32 = 1024;
/// Longest task id, so that ids fit in Kubernetes-style names and log lines.
pub const MAX_TASK_ID_LEN: usize = 63;

/// A job spec as written: permissive types, checked by [`plan`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name; [`DEFAULT_JOB_NAME`] when missing or blank.
    #[serde(default)]
    pub name: String,
    /// The tasks, in any order; references decide the order they run in.
    #[serde(default)]
    pub tasks: Vec<TaskDecl>,
}

/// One task as written in a job spec.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDecl {
    /// Unique id within the job; other tasks refer to it with `{ref: ID}`.
    pub id: String,
    /// `builtin:NAME`, a function of the workers' registry. Exclusive with `exec`.
    #[serde(default)]
    pub function: Option<String>,
    /// A command line run as a child process of a worker. Exclusive with `function`.
    #[serde(default)]
    pub exec: Option<ExecDecl>,
    /// Arguments: JSON literals, `{ref: ID, index: I}` or `{value: X}`.
    #[serde(default)]
    pub args: Vec<Json>,
    /// Resource names to quantities (`1`, `0.5`, `500m`, `256Mi`). Missing:
    /// `{cpu: 1}`. A map without `cpu` asks for no CPU at all.
    #[serde(default)]
    pub resources: Option<serde_json::Map<String, Json>>,
    /// How many results the task returns, 1 to [`MAX_NUM_RETURNS`]; 1 when missing.
    #[serde(default)]
    pub num_returns: Option<u32>,
    /// Retries after a worker or node failure; -1 retries forever; 3 when missing.
    #[serde(default)]
    pub max_retries: Option<i32>,
    /// Whether an error raised by the function is retried too; false when missing.
    #[serde(default)]
    pub retry_exceptions: Option<bool>,
    /// Where the task may run; the default hybrid policy when missing.
    #[serde(default)]
    pub strategy: Option<StrategyDecl>,
    /// `exec` only: `json` (stdout is parsed as JSON, the default) or `text`.
    #[serde(default)]
    pub output: Option<String>,
    /// `exec` only: variables added to the worker's environment.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// `exec` only: the working directory of the command.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// An `exec` command line: a list such as `[python3, -c, "print(42)"]`.
///
/// A single string is refused rather than split on spaces, because no
/// splitting rule gets quoting right for every program. In YAML, unquoted
/// items are taken as written, so `[sleep, 1.50]` passes "1.50"; in JSON
/// every item must be a string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecDecl {
    /// The program followed by its arguments.
    pub argv: Vec<String>,
}

impl<'de> Deserialize<'de> for ExecDecl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgvVisitor;

        impl<'de> Visitor<'de> for ArgvVisitor {
            type Value = ExecDecl;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list such as [python3, -c, \"print(42)\"]")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ExecDecl, E> {
                Err(E::custom(format!(
                    "`exec` must be a list such as [sh, -c, \"...\"], not the single string {v:?} \
                     (strings are not split on spaces)"
                )))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ExecDecl, A::Error> {
                // Items are read as strings, so YAML keeps their text as
                // written: `[echo, 1.10, 0x10]` passes "1.10" and "0x10".
                let mut argv = Vec::new();
                while let Some(ArgvItem(item)) = seq.next_element()? {
                    argv.push(item);
                }
                Ok(ExecDecl { argv })
            }
        }

        deserializer.deserialize_any(ArgvVisitor)
    }
}

/// One `exec` item, which must be a string (or, in YAML, any scalar).
struct ArgvItem(String);

impl<'de> Deserialize<'de> for ArgvItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;

        impl Visitor<'_> for ItemVisitor {
            type Value = ArgvItem;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("each `exec` item to be a string (quote numbers in JSON)")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ArgvItem, E> {
                Ok(ArgvItem(v.to_string()))
            }
        }

        deserializer.deserialize_string(ItemVisitor)
    }
}

/// A scheduling strategy as written; [`plan`] checks keywords and node ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrategyDecl {
    /// `default` or `spread` (or a misspelling, reported by [`plan`]).
    Keyword(String),
    /// `{node: NODE_ID, soft: BOOL}`: run on that node; if `soft`, elsewhere
    /// when it is gone or full.
    Node {
        /// The node id in hex, as `shoal` prints it.
        node: String,
        /// Whether another node may be used instead.
        soft: bool,
    },
    /// `{labels: {KEY: VALUE}}`: run on a node carrying all these labels.
    Labels(BTreeMap<String, String>),
}

const STRATEGY_FORMS: &str = "`default`, `spread`, {node: NODE_ID, soft: BOOL} or {labels: {KEY: VALUE}}";

impl<'de> Deserialize<'de> for StrategyDecl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrategyVisitor;

        impl<'de> Visitor<'de> for StrategyVisitor {
            type Value = StrategyDecl;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a strategy: {STRATEGY_FORMS}")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrategyDecl, E> {
                Ok(StrategyDecl::Keyword(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrategyDecl, A::Error> {
                let bad = |what: &str| de::Error::custom(format!("`strategy` {what}; expected {STRATEGY_FORMS}"));
                // Values are read as strings so that YAML keeps a node id
                // such as 0123456789012345 as written, not as a number.
                let (mut node, mut soft, mut labels) = (None, None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "node" => node = Some(map.next_value::<String>()?),
                        "soft" => soft = Some(map.next_value::<bool>()?),
                        "labels" => {
                            let read = map.next_value::<BTreeMap<String, LabelValue>>()?;
                            labels = Some(read.into_iter().map(|(k, v)| (k, v.0)).collect());
                        }
                        other => return Err(bad(&format!("has unknown key `{other}`"))),
                    }
                }
                match (node, labels) {
                    (Some(node), None) => Ok(StrategyDecl::Node { node, soft: soft.unwrap_or(false) }),
                    (None, Some(labels)) if soft.is_none() => Ok(StrategyDecl::Labels(labels)),
                    (None, Some(_)) => Err(bad("gives `soft` without `node`")),
                    (Some(_), Some(_)) => Err(bad("gives both `node` and `labels`")),
                    (None, None) => Err(bad("names neither `node` nor `labels`")),
                }
            }
        }

        deserializer.deserialize_any(StrategyVisitor)
    }
}

/// A label value in a strategy: a string, or a number or boolean read as
/// its text (YAML's `tier: 1`); a null is refused, not read as `"null"`.
struct LabelValue(String);

impl<'de> Deserialize<'de> for LabelValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LabelValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a label value (a string, number or boolean)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Why a job spec was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum JobSpecError {
    /// The text is not YAML/JSON of the job spec's shape.
    #[error("{}", parse_message(.format, .message, .line, .column, .problems))]
    Parse {
        /// `YAML` or `JSON`.
        format: &'static str,
        /// The parser's message, with its location when it gives one.
        message: String,
        /// 1-based line of the first error, when known.
        line: Option<usize>,
        /// 1-based column of the first error, when known.
        column: Option<usize>,
        /// Every task that failed to parse, named: `task `x`: unknown field ...`.
        problems: Vec<String>,
    },
    /// The spec parsed but describes no valid job; one line per problem,
    /// each naming its task.
    #[error("invalid job spec ({} problem{}):\n  - {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n  - "))]
    Invalid(Vec<String>),
}

fn parse_message(
    format: &str,
    message: &str,
    line: &Option<usize>,
    column: &Option<usize>,
    problems: &[String],
) -> String {
    if problems.is_empty() {
        return format!("job spec is not valid {format}: {message}");
    }
    let at = match (line, column) {
        (Some(l), Some(c)) => format!(" (first error at line {l} column {c})"),
        _ => String::new(),
    };
    format!("job spec is not valid {format}{at}:\n  - {}", problems.join("\n  - "))
}

impl JobSpecError {
    /// Every problem as one line, for API error bodies.
    pub fn problems(&self) -> Vec<String> {
        match self {
            JobSpecError::Parse { message, problems, .. } if problems.is_empty() => vec![message.clone()],
            JobSpecError::Parse { problems, .. } | JobSpecError::Invalid(problems) => problems.clone(),
        }
    }
}

/// A validated job: tasks in an order where each comes after every task it
/// refers to.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPlan {
    /// The job's name.
    pub name: String,
    /// Tasks in topological order (declaration order among independent tasks).
    pub tasks: Vec<PlannedTask>,
}

/// One validated task, ready to become a task spec.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTask {
    /// The id from the spec.
    pub id: String,
    /// What the task runs.
    pub function: pb::FunctionDescriptor,
    /// Top-level arguments, references resolved to plan positions.
    pub args: Vec<PlanArg>,
    /// Resources held while the task runs.
    pub resources: ResourceSet,
    /// Number of results, at least 1.
    pub num_returns: u32,
    /// Retries after system failures; -1 retries forever.
    pub max_retries: i32,
    /// Whether errors raised by the function are retried.
    pub retry_exceptions: bool,
    /// Placement constraint; `None` for the default policy.
    pub strategy: Option<pb::SchedulingStrategy>,
    /// Whether no other task refers to this one: its results are the job's output.
    pub is_sink: bool,
}

/// A task argument in a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanArg {
    /// A JSON value passed as is.
    Literal(Json),
    /// Result `index` of the task at position `task` in [`JobPlan::tasks`]
    /// (always earlier than the task holding this argument).
    Ref {
        /// Position of the producing task in the plan.
        task: usize,
        /// Which of its returns.
        index: u32,
    },
}

/// Reads a job spec from YAML, or from JSON when the first non-blank
/// character is `{`.
///
/// When the text is well-formed but some tasks do not fit the spec's shape,
/// the error lists each such task by id.
pub fn parse(text: &str) -> Result<JobSpec, JobSpecError> {
    let is_json = text.trim_start().starts_with('{');
    let format = if is_json { "JSON" } else { "YAML" };
    if text.trim().is_empty() {
        return Err(JobSpecError::Parse {
            format,
            message: "the text is empty".to_string(),
            line: None,
            column: None,
            problems: Vec::new(),
        });
    }
    let (message, line, column) = if is_json {
        match serde_json::from_str::<JobSpec>(text) {
            Ok(spec) => return Ok(spec),
            Err(e) => {
                let at = (e.line() > 0).then_some((e.line(), e.column()));
                (e.to_string(), at.map(|a| a.0), at.map(|a| a.1))
            }
        }
    } else {
        match serde_yaml_ng::from_str::<JobSpec>(text) {
            Ok(spec) => return Ok(spec),
            Err(e) => {
                let at = e.location();
                (e.to_string(), at.as_ref().map(|l| l.line()), at.as_ref().map(|l| l.column()))
            }
        }
    };
    Err(JobSpecError::Parse { format, message, line, column, problems: task_shape_problems(text, is_json) })
}

/// Re-reads a spec that failed to parse as a generic document and tries each
/// task alone, so the error can name every malformed task instead of giving
/// only the first position.
fn task_shape_problems(text: &str, is_json: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut report = |i: usize, id: Option<&str>, e: &dyn fmt::Display| {
        let who = match id {
            Some(id) if !id.is_empty() => format!("task `{id}`"),
            _ => format!("task #{i}"),
        };
        problems.push(format!("{who}: {e}"));
    };
    if is_json {
        let Ok(doc) = serde_json::from_str::<Json>(text) else {
            return Vec::new();
        };
        let Some(Json::Array(tasks)) = doc.get("tasks") else {
            return Vec::new();
        };
        for (i, t) in tasks.iter().enumerate() {
            if let Err(e) = TaskDecl::deserialize(t) {
                report(i, t.get("id").and_then(Json::as_str), &e);
            }
        }
    } else {
        // Each task goes back to YAML text, so its scalars are read exactly
        // as the first pass read them (a generic value would have turned
        // `1.10` into a number already).
        let Ok(doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
            return Vec::new();
        };
        let Some(serde_yaml_ng::Value::Sequence(tasks)) = doc.get("tasks") else {
            return Vec::new();
        };
        for (i, t) in tasks.iter().enumerate() {
            let parsed = serde_yaml_ng::to_string(t).and_then(|one| serde_yaml_ng::from_str::<TaskDecl>(&one));
            if let Err(e) = parsed {
                report(i, t.get("id").and_then(serde_yaml_ng::Value::as_str), &without_location(&e.to_string()));
            }
        }
    }
    problems
}

/// Checks a spec and orders its tasks; `is_known_builtin` answers for names
/// after `builtin:`.
///
/// Every problem is reported, not only the first. Runs in time linear in the
/// number of tasks and arguments.
pub fn plan(spec: &JobSpec, is_known_builtin: &dyn Fn(&str) -> bool) -> Result<JobPlan, JobSpecError> {
    let name = match spec.name.trim() {
        "" => DEFAULT_JOB_NAME.to_string(),
        n => n.to_string(),
    };
    if spec.tasks.is_empty() {
        return Err(JobSpecError::Invalid(vec![format!("job `{name}`: has no tasks")]));
    }

    let mut problems = Vec::new();
    let index = index_ids(&spec.tasks, &mut problems);

    // Per-task checks; references are resolved to declaration indexes here
    // and to plan positions once the order is known.
    let mut checked: Vec<Option<Checked>> = Vec::with_capacity(spec.tasks.len());
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(spec.tasks.len());
    for (i, decl) in spec.tasks.iter().enumerate() {
        let mut p = TaskProblems { who: task_label(decl, i), list: &mut problems };
        let (c, d) = check_task(decl, i, spec, &index, is_known_builtin, &mut p);
        checked.push(c);
        deps.push(d);
    }

    let order = topological_order(&deps);
    if order.len() < spec.tasks.len() {
        report_cycles(spec, &deps, &order, &mut problems);
    }
    if !problems.is_empty() {
        return Err(JobSpecError::Invalid(problems));
    }

    let mut position = vec![0usize; spec.tasks.len()];
    for (pos, &i) in order.iter().enumerate() {
        if let Some(slot) = position.get_mut(i) {
            *slot = pos;
        }
    }
    let mut referenced = vec![false; spec.tasks.len()];
    for d in deps.iter().flatten() {
        if let Some(r) = referenced.get_mut(*d) {
            *r = true;
        }
    }
    let mut tasks = Vec::with_capacity(order.len());
    for &i in &order {
        let (Some(Some(c)), Some(decl)) = (checked.get_mut(i).map(Option::take), spec.tasks.get(i)) else {
            continue;
        };
        let args = c
            .args
            .into_iter()
            .map(|a| match a {
                CheckedArg::Literal(v) => PlanArg::Literal(v),
                CheckedArg::Ref { decl, index } => {
                    PlanArg::Ref { task: position.get(decl).copied().unwrap_or_default(), index }
                }
            })
            .collect();
        tasks.push(PlannedTask {
            id: decl.id.clone(),
            function: c.function,
            args,
            resources: c.resources,
            num_returns: c.num_returns,
            max_retries: c.max_retries,
            retry_exceptions: c.retry_exceptions,
            strategy: c.strategy,
            is_sink: !referenced.get(i).copied().unwrap_or(false),
        });
    }
    Ok(JobPlan { name, tasks })
}

/// A task that passed its own checks, references still by declaration index.
struct Checked {
    function: pb::FunctionDescriptor,
    args: Vec<CheckedArg>,
    resources: ResourceSet,
    num_returns: u32,
    max_retries: i32,
    retry_exceptions: bool,
    strategy: Option<pb::SchedulingStrategy>,
}

enum CheckedArg {
    Literal(Json),
    Ref { decl: usize, index: u32 },
}

/// Collects problems of one task, each prefixed with the task's name.
struct TaskProblems<'a> {
    who: String,
    list: &'a mut Vec<String>,
}

impl TaskProblems<'_> {
    fn push(&mut self, what: impl fmt::Display) {
        self.list.push(format!("{}: {what}", self.who));
    }
}

fn task_label(decl: &TaskDecl, i: usize) -> String {
    if decl.id.is_empty() {
        format!("task #{i}")
    } else {
        format!("task `{}`", decl.id)
    }
}

fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TASK_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Maps each valid id to its first declaration, reporting bad and duplicate ids.
fn index_ids<'a>(tasks: &'a [TaskDecl], problems: &mut Vec<String>) -> HashMap<&'a str, usize> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        if t.id.is_empty() {
            problems.push(format!("task #{i}: `id` is empty"));
            continue;
        }
        if !valid_task_id(&t.id) {
            problems.push(format!(
                "task `{}`: id may only use letters, digits, `_`, `.` and `-`, at most {MAX_TASK_ID_LEN} characters",
                t.id
            ));
        }
        if let Some(first) = index.get(t.id.as_str()) {
            problems.push(format!("task `{}`: duplicate id (task #{i} repeats task #{first})", t.id));
        } else {
            index.insert(&t.id, i);
        }
    }
    index
}

/// Checks everything about one task that does not need the whole graph.
/// Returns the checked task (when it has no problem) and the declaration
/// indexes it refers to, sorted and without repeats.
fn check_task(
    decl: &TaskDecl,
    me: usize,
    spec: &JobSpec,
    index: &HashMap<&str, usize>,
    is_known_builtin: &dyn Fn(&str) -> bool,
    p: &mut TaskProblems<'_>,
) -> (Option<Checked>, Vec<usize>) {
    let before = p.list.len();

    let function = check_function(decl, is_known_builtin, p);

    let num_returns = decl.num_returns.unwrap_or(1);
    if num_returns == 0 || num_returns > MAX_NUM_RETURNS {
        p.push(format_args!("`num_returns` is {num_returns}; it must be between 1 and {MAX_NUM_RETURNS}"));
    }
    let max_retries = decl.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    if max_retries < -1 {
        p.push(format_args!("`max_retries` is {max_retries}; use -1 for unlimited, or 0 or more"));
    }
    let resources = check_resources(decl.resources.as_ref(), p);
    let strategy = decl.strategy.as_ref().and_then(|s| check_strategy(s, p));

    let mut deps = Vec::new();
    let mut args = Vec::with_capacity(decl.args.len());
    for (n, arg) in decl.args.iter().enumerate() {
        match classify_arg(arg) {
            Ok(ArgForm::Literal(v)) => args.push(CheckedArg::Literal(v.clone())),
            Ok(ArgForm::Ref { id, index: ret }) => match index.get(id) {
                None => p.push(format_args!("argument {n} refers to unknown task `{id}`")),
                Some(&target) if target == me => p.push(format_args!("argument {n} refers to the task itself")),
                Some(&target) => {
                    let target_returns = spec.tasks.get(target).and_then(|t| t.num_returns).unwrap_or(1).max(1);
                    if ret >= target_returns {
                        p.push(format_args!(
                            "argument {n} refers to return {ret} of task `{id}`, which has num_returns {target_returns} \
                             (indexes start at 0)"
                        ));
                    }
                    deps.push(target);
                    args.push(CheckedArg::Ref { decl: target, index: ret });
                }
            },
            Err(why) => p.push(format_args!("argument {n} {why}")),
        }
    }
    deps.sort_unstable();
    deps.dedup();

    let ok = p.list.len() == before;
    let checked = match (ok, function, resources) {
        (true, Some(function), Some(resources)) => Some(Checked {
            function,
            args,
            resources,
            num_returns,
            max_retries,
            retry_exceptions: decl.retry_exceptions.unwrap_or(false),
            strategy,
        }),
        _ => None,
    };
    (checked, deps)
}

fn check_function(
    decl: &TaskDecl,
    is_known_builtin: &dyn Fn(&str) -> bool,
    p: &mut TaskProblems<'_>,
) -> Option<pb::FunctionDescriptor> {
    use pb::function_descriptor::Kind;
    match (&decl.function, &decl.exec) {
        (None, None) => {
            p.push("give either `function: builtin:NAME` or `exec: [PROGRAM, ARG...]`");
            None
        }
        (Some(_), Some(_)) => {
            p.push("give either `function` or `exec`, not both");
            None
        }
        (Some(f), None) => {
            for (field, given) in
                [("output", decl.output.is_some()), ("env", decl.env.is_some()), ("cwd", decl.cwd.is_some())]
            {
                if given {
                    p.push(format_args!("`{field}` applies to `exec` tasks only, not to `{f}`"));
                }
            }
            let Some(name) = f.strip_prefix("builtin:") else {
                p.push(format_args!(
                    "function `{f}` is not of the form `builtin:NAME` (use `exec: [PROGRAM, ARG...]` to run a command)"
                ));
                return None;
            };
            if name.is_empty() {
                p.push("function `builtin:` names no builtin");
                None
            } else if !is_known_builtin(name) {
                p.push(format_args!("unknown builtin `{name}`"));
                None
            } else {
                Some(pb::FunctionDescriptor { kind: Some(Kind::Builtin(name.to_string())) })
            }
        }
        (None, Some(exec)) => {
            let before = p.list.len();
            if exec.argv.is_empty() {
                p.push("`exec` is an empty list; it needs at least the program to run");
            } else if exec.argv.first().is_some_and(|a| a.is_empty()) {
                p.push("`exec` program name is empty");
            }
            if exec.argv.iter().any(|a| a.contains('\0')) {
                p.push("`exec` contains a NUL character");
            }
            let output_text = match decl.output.as_deref() {
                None | Some("json") => false,
                Some("text") => true,
                Some(other) => {
                    p.push(format_args!("`output` is `{other}`; it must be `json` or `text`"));
                    false
                }
            };
            let env = decl.env.clone().unwrap_or_default();
            for (k, v) in &env {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    p.push(format_args!("`env` name `{k}` is invalid (empty, or contains `=` or NUL)"));
                }
                if v.contains('\0') {
                    p.push(format_args!("`env` value of `{k}` contains a NUL character"));
                }
            }
            let cwd = decl.cwd.clone().unwrap_or_default();
            if cwd.contains('\0') {
                p.push("`cwd` contains a NUL character");
            }
            (p.list.len() == before).then(|| pb::FunctionDescriptor {
                kind: Some(Kind::Exec(pb::ExecFunction {
                    argv: exec.argv.clone(),
                    env: env.into_iter().collect(),
                    cwd,
                    output_text,
                })),
            })
        }
    }
}

/// Reads `resources` with the runtime's quantity rules, reporting every bad
/// entry. Missing means one CPU; a given map means exactly what it lists.
fn check_resources(map: Option<&serde_json::Map<String, Json>>, p: &mut TaskProblems<'_>) -> Option<ResourceSet> {
    let Some(map) = map else {
        return Some(ResourceSet::new().with(resources::CPU, 1.0));
    };
    let mut set = ResourceSet::new();
    let mut seen: HashMap<String, &str> = HashMap::with_capacity(map.len());
    let mut ok = true;
    for (raw, v) in map {
        let name = match resources::canonical_name(raw) {
            Ok(n) => n,
            Err(e) => {
                p.push(e);
                ok = false;
                continue;
            }
        };
        if let Some(first) = seen.get(&name) {
            p.push(format_args!("resource `{name}` is given twice (as `{first}` and `{raw}`)"));
            ok = false;
            continue;
        }
        match resources::parse_json_quantity(&name, v) {
            Ok(units) => set.set_units(&name, units),
            Err(e) => {
                p.push(e);
                ok = false;
            }
        }
        seen.insert(name, raw);
    }
    ok.then_some(set)
}

fn check_strategy(s: &StrategyDecl, p: &mut TaskProblems<'_>) -> Option<pb::SchedulingStrategy> {
    use pb::scheduling_strategy::Kind;
    let kind = match s {
        StrategyDecl::Keyword(k) => match k.to_ascii_lowercase().as_str() {
            "default" => return None,
            "spread" => Kind::Spread(true),
            _ => {
                p.push(format_args!("unknown strategy `{k}`; expected {STRATEGY_FORMS}"));
                return None;
            }
        },
        StrategyDecl::Node { node, soft } => match node.parse::<NodeId>() {
            Ok(id) => Kind::NodeAffinity(pb::NodeAffinity { node_id: id.to_bytes(), soft: *soft }),
            Err(e) => {
                p.push(format_args!("strategy: {e}"));
                return None;
            }
        },
        StrategyDecl::Labels(labels) => Kind::Labels(pb::LabelSelector {
            match_labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }),
    };
    Some(pb::SchedulingStrategy { kind: Some(kind) })
}

enum ArgForm<'a> {
    Literal(&'a Json),
    Ref { id: &'a str, index: u32 },
}

/// Tells a reference from a literal. An object with a `ref` key is a
/// reference and may carry only `index` besides; `{value: X}` is always the
/// literal `X` and carries nothing else.
fn classify_arg(arg: &Json) -> Result<ArgForm<'_>, String> {
    let Json::Object(map) = arg else {
        return Ok(ArgForm::Literal(arg));
    };
    if let Some(v) = map.get("value") {
        if let Some(extra) = map.keys().find(|k| *k != "value") {
            return Err(format!(
                "has `value` and also `{extra}`; {{value: X}} takes nothing else (wrap a literal object in {{value: ...}})"
            ));
        }
        return Ok(ArgForm::Literal(v));
    }
    let Some(r) = map.get("ref") else {
        return Ok(ArgForm::Literal(arg));
    };
    if let Some(extra) = map.keys().find(|k| *k != "ref" && *k != "index") {
        return Err(format!(
            "has `ref` and also `{extra}`; a reference takes only `index` besides (wrap a literal object in {{value: ...}})"
        ));
    }
    let Json::String(id) = r else {
        return Err(format!("has `ref` {}, not a task id string", describe(r)));
    };
    let index = match map.get("index") {
        None => 0,
        Some(i) => match i.as_u64().and_then(|i| u32::try_from(i).ok()) {
            Some(i) => i,
            None => return Err(format!("has `index` {}, not a non-negative integer", describe(i))),
        },
    };
    Ok(ArgForm::Ref { id, index })
}

/// Kahn's algorithm over declaration indexes; among ready tasks the earliest
/// declared goes first, so an already ordered spec keeps its order. Returns
/// fewer indexes than tasks when there is a cycle.
fn topological_order(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut pending: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            if let Some(list) = dependents.get_mut(d) {
                list.push(i);
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        pending.iter().enumerate().filter(|(_, &c)| c == 0).map(|(i, _)| Reverse(i)).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &j in dependents.get(i).map(Vec::as_slice).unwrap_or_default() {
            if let Some(c) = pending.get_mut(j) {
                *c -= 1;
                if *c == 0 {
                    ready.push(Reverse(j));
                }
            }
        }
    }
    order
}

/// Names the tasks on every cycle among the tasks Kahn's algorithm could not
/// order. Each such task has a dependency that is also unordered, so walking
/// those dependencies always ends on a cycle; each task is walked once.
fn report_cycles(spec: &JobSpec, deps: &[Vec<usize>], order: &[usize], problems: &mut Vec<String>) {
    const UNSEEN: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let n = deps.len();
    let mut state = vec![UNSEEN; n];
    for &i in order {
        if let Some(s) = state.get_mut(i) {
            *s = DONE;
        }
    }
    let id = |i: usize| spec.tasks.get(i).map(|t| t.id.as_str()).unwrap_or("?");
    for start in 0..n {
        if state.get(start) != Some(&UNSEEN) {
            continue;
        }
        let mut path = Vec::new();
        let mut cur = start;
        loop {
            match state.get(cur) {
                Some(&ON_PATH) => {
                    let from = path.iter().position(|&x| x == cur).unwrap_or(0);
                    let mut cycle: Vec<usize> = path.get(from..).unwrap_or_default().to_vec();
                    // Start at the first declared task so messages are stable.
                    if let Some(min_at) = cycle.iter().enumerate().min_by_key(|(_, &t)| t).map(|(k, _)| k) {
                        cycle.rotate_left(min_at);
                    }
                    let first = cycle.first().copied().unwrap_or(cur);
                    let chain: Vec<String> =
                        cycle.iter().chain(std::iter::once(&first)).map(|&t| format!("`{}`", id(t))).collect();
                    problems.push(format!(
                        "task `{}`: dependency cycle {} (each task refers to the next)",
                        id(first),
                        chain.join(" → ")
                    ));
                    break;
                }
                Some(&UNSEEN) => {
                    if let Some(s) = state.get_mut(cur) {
                        *s = ON_PATH;
                    }
                    path.push(cur);
                    let next = deps.get(cur).and_then(|ds| ds.iter().find(|&&d| state.get(d) != Some(&DONE)));
                    match next {
                        Some(&d) => cur = d,
                        None => break,
                    }
                }
                _ => break,
            }
        }
        for t in path {
            if let Some(s) = state.get_mut(t) {
                *s = DONE;
            }
        }
    }
}

/// Drops the " at line L column C" a re-parsed fragment would report, as
/// its positions are not those of the spec.
fn without_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message.get(..at).unwrap_or(message).to_string(),
        None => message.to_string(),
    }
}

/// A short description of a JSON value for error messages.
fn describe(v: &Json) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str) -> bool {
        matches!(name, "identity" | "sum" | "mul" | "noop")
    }

    fn plan_yaml(text: &str) -> Result<JobPlan, JobSpecError> {
        plan(&parse(text).unwrap(), &known)
    }

    /// Plans `text`, expects it refused, and returns the problems.
    fn problems(text: &str) -> Vec<String> {
        match plan_yaml(text) {
            Ok(p) => panic!("expected a rejection, got {p:?}"),
            Err(e) => e.problems(),
        }
    }

    fn assert_problem(text: &str, task: &str, needle: &str) {
        let ps = problems(text);
        assert!(
            ps.iter().any(|p| p.contains(&format!("task `{task}`")) && p.contains(needle)),
            "no problem naming task `{task}` with {needle:?} in {ps:#?}"
        );
    }

    #[test]
    fn diamond_plans_in_dependency_order() {
        let plan = plan_yaml(
            r#"
name: diamond
tasks:
  - id: join
    function: builtin:sum
    args: [{ref: left}, {ref: right}]
  - id: left
    function: builtin:mul
    args: [{ref: top}, 2]
  - id: right
    function: builtin:mul
    args: [{ref: top}, 3]
  - id: top
    exec: [python3, -c, "print(42)"]
    resources: {cpu: 0.5, memory: 256Mi}
    output: json
"#,
        )
        .unwrap();
        assert_eq!(plan.name, "diamond");
        let ids: Vec<&str> = plan.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["top", "left", "right", "join"]);
        let join = &plan.tasks[3];
        assert_eq!(join.args, [PlanArg::Ref { task: 1, index: 0 }, PlanArg::Ref { task: 2, index: 0 }]);
        assert!(join.is_sink);
        assert!(plan.tasks[..3].iter().all(|t| !t.is_sink));
        assert_eq!(plan.tasks[1].args[1], PlanArg::Literal(serde_json::json!(2)));
        let top = &plan.tasks[0];
        assert_eq!(top.resources.get(resources::CPU), 0.5);
        assert_eq!(top.resources.get(resources::MEMORY), 256.0 * 1024.0 * 1024.0);
        match &top.function.kind {
            Some(pb::function_descriptor::Kind::Exec(e)) => {
                assert_eq!(e.argv, ["python3", "-c", "print(42)"]);
                assert!(!e.output_text);
            }
            other => panic!("not exec: {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_when_fields_are_missing() {
        let plan = plan_yaml("tasks: [{id: a, function: 'builtin:noop'}]").unwrap();
        assert_eq!(plan.name, DEFAULT_JOB_NAME);
        let t = &plan.tasks[0];
        assert_eq!(t.resources, ResourceSet::new().with(resources::CPU, 1.0));
        assert_eq!((t.num_returns, t.max_retries, t.retry_exceptions), (1, 3, false));
        assert_eq!(t.strategy, None);
        assert_eq!(t.function.kind, Some(pb::function_descriptor::Kind::Builtin("noop".into())));
        let no_cpu = plan_yaml("tasks: [{id: a, function: 'builtin:noop', resources: {gpu: 1}}]").unwrap();
        assert_eq!(no_cpu.tasks[0].resources.units(resources::CPU), 0);
        let unlimited = plan_yaml("tasks: [{id: a, function: 'builtin:noop', max_retries: -1}]").unwrap();
        assert_eq!(unlimited.tasks[0].max_retries, -1);
    }

    #[test]
    fn json_and_yaml_both_parse_to_the_same_spec() {
        let yaml = parse("name: j\ntasks:\n  - id: a\n    function: builtin:sum\n    args: [1, {ref: b, index: 1}]\n  - id: b\n    exec: [sh, -c, 'echo [1,2]']\n    num_returns: 2\n").unwrap();
        let json = parse(
            r#"  {"name": "j", "tasks": [
                {"id": "a", "function": "builtin:sum", "args": [1, {"ref": "b", "index": 1}]},
                {"id": "b", "exec": ["sh", "-c", "echo [1,2]"], "num_returns": 2}]}"#,
        )
        .unwrap();
        assert_eq!(yaml, json);
        let plan = plan(&json, &known).unwrap();
        assert_eq!(plan.tasks[1].args[1], PlanArg::Ref { task: 0, index: 1 });
    }

    #[test]
    fn value_wrapper_keeps_a_ref_shaped_object_literal() {
        let plan =
            plan_yaml("tasks:\n  - id: a\n    function: builtin:identity\n    args: [{value: {ref: x}}, [{ref: y}]]\n")
                .unwrap();
        assert_eq!(plan.tasks[0].args[0], PlanArg::Literal(serde_json::json!({"ref": "x"})));
        assert_eq!(plan.tasks[0].args[1], PlanArg::Literal(serde_json::json!([{"ref": "y"}])));
        assert!(plan.tasks[0].is_sink);
    }

    #[test]
    fn a_ten_thousand_task_fan_in_plans_with_one_sink() {
        let n = 10_000;
        let mut tasks: Vec<TaskDecl> = (0..n)
            .map(|i| TaskDecl {
                id: format!("leaf-{i}"),
                function: Some("builtin:identity".into()),
                exec: None,
                args: vec![serde_json::json!(i)],
                resources: None,
                num_returns: None,
                max_retries: None,
                retry_exceptions: None,
                strategy: None,
                output: None,
                env: None,
                cwd: None,
            })
            .collect();
        let mut sink = tasks[0].clone();
        sink.id = "total".into();
        sink.function = Some("builtin:sum".into());
        sink.args = (0..n).map(|i| serde_json::json!({"ref": format!("leaf-{i}")})).collect();
        tasks.insert(0, sink);
        let spec = JobSpec { name: "fan-in".into(), tasks };
        let plan = plan(&spec, &known).unwrap();
        assert_eq!(plan.tasks.len(), n + 1);
        assert_eq!(plan.tasks[n].id, "total");
        assert!(plan.tasks[n].is_sink);
        assert_eq!(plan.tasks.iter().filter(|t| t.is_sink).count(), 1);
    }

    #[test]
    fn empty_job_is_rejected() {
        let ps = problems("name: nothing\ntasks: []\n");
        assert_eq!(ps, ["job `nothing`: has no tasks"]);
    }

    #[test]
    fn empty_or_invalid_ids_are_rejected() {
        assert!(problems("tasks: [{id: '', function: 'builtin:noop'}]")[0].contains("task #0: `id` is empty"));
        assert_problem("tasks: [{id: 'has space', function: 'builtin:noop'}]", "has space", "letters, digits");
        let long = "x".repeat(64);
        assert_problem(&format!("tasks: [{{id: {long}, function: 'builtin:noop'}}]"), &long, "at most 63");
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        assert_problem(
            "tasks: [{id: a, function: 'builtin:noop'}, {id: a, function: 'builtin:noop'}]",
            "a",
            "duplicate id",
        );
    }

    #[test]
    fn function_and_exec_must_be_given_exactly_once() {
        assert_problem("tasks: [{id: a}]", "a", "either");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', exec: [true]}]", "a", "not both");
    }

    #[test]
    fn functions_must_be_known_builtins() {
        assert_problem("tasks: [{id: a, function: noop}]", "a", "not of the form `builtin:NAME`");
        assert_problem("tasks: [{id: a, function: 'builtin:'}]", "a", "names no builtin");
        assert_problem("tasks: [{id: a, function: 'builtin:nope'}]", "a", "unknown builtin `nope`");
    }

    #[test]
    fn exec_must_be_a_non_empty_list() {
        assert_problem("tasks: [{id: a, exec: []}]", "a", "empty list");
        let e = parse("tasks: [{id: a, exec: 'python3 -c 1'}]").unwrap_err();
        let ps = e.problems();
        assert!(ps.iter().any(|p| p.contains("task `a`") && p.contains("not split on spaces")), "{ps:?}");
        let with_number = plan_yaml("tasks: [{id: a, exec: [echo, 1, 1.10, 0x10, true]}]").unwrap();
        match &with_number.tasks[0].function.kind {
            Some(pb::function_descriptor::Kind::Exec(e)) => {
                assert_eq!(e.argv, ["echo", "1", "1.10", "0x10", "true"])
            }
            other => panic!("not exec: {other:?}"),
        }
    }

    #[test]
    fn references_must_name_other_existing_tasks() {
        let spec = "tasks:\n  - {id: raw, function: 'builtin:noop'}\n  - {id: doubled, function: 'builtin:mul', args: [{ref: rawx}, 2]}\n";
        assert_eq!(problems(spec), ["task `doubled`: argument 0 refers to unknown task `rawx`"]);
        assert_problem("tasks: [{id: a, function: 'builtin:identity', args: [{ref: a}]}]", "a", "itself");
        assert_problem(
            "tasks: [{id: a, function: 'builtin:noop'}, {id: b, function: 'builtin:identity', args: [{ref: a, index: 1}]}]",
            "b",
            "return 1 of task `a`, which has num_returns 1",
        );
        assert_problem(
            "tasks: [{id: a, function: 'builtin:noop'}, {id: b, function: 'builtin:identity', args: [{ref: a, index: -1}]}]",
            "b",
            "not a non-negative integer",
        );
        assert_problem(
            "tasks: [{id: a, function: 'builtin:noop'}, {id: b, function: 'builtin:identity', args: [{ref: a, idx: 1}]}]",
            "b",
            "{value: ...}",
        );
        assert_problem("tasks: [{id: b, function: 'builtin:identity', args: [{ref: 7}]}]", "b", "not a task id");
    }

    #[test]
    fn cycles_are_rejected_naming_their_tasks_in_order() {
        let ps = problems(
            "tasks:
  - {id: a, function: 'builtin:identity', args: [{ref: c}]}
  - {id: b, function: 'builtin:identity', args: [{ref: a}]}
  - {id: c, function: 'builtin:identity', args: [{ref: b}]}
  - {id: d, function: 'builtin:identity', args: [{ref: a}]}
  - {id: e, function: 'builtin:identity', args: [{ref: f}]}
  - {id: f, function: 'builtin:identity', args: [{ref: e}]}
",
        );
        assert_eq!(
            ps,
            [
                "task `a`: dependency cycle `a` → `c` → `b` → `a` (each task refers to the next)",
                "task `e`: dependency cycle `e` → `f` → `e` (each task refers to the next)",
            ]
        );
    }

    #[test]
    fn bad_resources_are_rejected() {
        assert_problem("tasks: [{id: a, function: 'builtin:noop', resources: {cpu: -1}}]", "a", "negative");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', resources: {memory: lots}}]", "a", "not a quantity");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', resources: {cpu: [1]}}]", "a", "not a quantity");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', resources: {'bad name': 1}}]", "a", "invalid");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', resources: {cpu: 1, CPU: 2}}]", "a", "twice");
    }

    #[test]
    fn num_returns_and_max_retries_are_bounded() {
        assert_problem("tasks: [{id: a, function: 'builtin:noop', num_returns: 0}]", "a", "between 1 and 1024");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', num_returns: 1025}]", "a", "between 1 and 1024");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', max_retries: -2}]", "a", "-1 for unlimited");
    }

    #[test]
    fn strategies_parse_and_bad_ones_are_rejected() {
        let node = NodeId([1, 2, 3, 4, 5, 6, 7, 8]);
        let plan = plan_yaml(&format!(
            "tasks:
  - {{id: a, function: 'builtin:noop', strategy: spread}}
  - {{id: b, function: 'builtin:noop', strategy: default}}
  - {{id: c, function: 'builtin:noop', strategy: {{node: '{node}', soft: true}}}}
  - {{id: d, function: 'builtin:noop', strategy: {{labels: {{zone: a, gpu: true}}}}}}
"
        ))
        .unwrap();
        use pb::scheduling_strategy::Kind;
        assert_eq!(plan.tasks[0].strategy.as_ref().unwrap().kind, Some(Kind::Spread(true)));
        assert_eq!(plan.tasks[1].strategy, None);
        assert_eq!(
            plan.tasks[2].strategy.as_ref().unwrap().kind,
            Some(Kind::NodeAffinity(pb::NodeAffinity { node_id: node.to_bytes(), soft: true }))
        );
        match &plan.tasks[3].strategy.as_ref().unwrap().kind {
            Some(Kind::Labels(l)) => {
                assert_eq!(l.match_labels.get("gpu").map(String::as_str), Some("true"))
            }
            other => panic!("not labels: {other:?}"),
        }
        assert_problem("tasks: [{id: a, function: 'builtin:noop', strategy: sprad}]", "a", "unknown strategy `sprad`");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', strategy: {node: xyz}}]", "a", "invalid node id");
        let digits =
            plan_yaml("tasks: [{id: a, function: 'builtin:noop', strategy: {node: 1234567890123456}}]").unwrap();
        let want: NodeId = "1234567890123456".parse().unwrap();
        assert_eq!(
            digits.tasks[0].strategy.as_ref().unwrap().kind,
            Some(Kind::NodeAffinity(pb::NodeAffinity { node_id: want.to_bytes(), soft: false }))
        );
        let both = parse("tasks: [{id: a, function: 'builtin:noop', strategy: {node: x, labels: {}}}]").unwrap_err();
        assert!(both.to_string().contains("gives both `node` and `labels`"), "{both}");
        let e = parse("tasks: [{id: a, function: 'builtin:noop', strategy: {nod: x}}]").unwrap_err();
        assert!(e.problems().iter().any(|p| p.contains("task `a`") && p.contains("unknown key `nod`")), "{e}");
    }

    #[test]
    fn exec_only_fields_are_checked() {
        assert_problem("tasks: [{id: a, exec: [cat], output: yaml}]", "a", "`json` or `text`");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', output: text}]", "a", "`output` applies to `exec`");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', env: {A: b}}]", "a", "`env` applies");
        assert_problem("tasks: [{id: a, function: 'builtin:noop', cwd: /tmp}]", "a", "`cwd` applies");
        assert_problem("tasks: [{id: a, exec: [cat], env: {'A=B': c}}]", "a", "`env` name");
        let plan = plan_yaml("tasks: [{id: a, exec: [cat], output: text, env: {A: b}, cwd: /tmp}]").unwrap();
        match &plan.tasks[0].function.kind {
            Some(pb::function_descriptor::Kind::Exec(e)) => {
                assert!(e.output_text);
                assert_eq!(e.env.get("A").map(String::as_str), Some("b"));
                assert_eq!(e.cwd, "/tmp");
            }
            other => panic!("not exec: {other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_rejected_naming_the_task_and_position() {
        let e = parse("name: j\ntasks:\n  - id: a\n    function: builtin:noop\n    retries: 3\n").unwrap_err();
        match &e {
            JobSpecError::Parse { line, column, problems, .. } => {
                assert_eq!(*line, Some(5));
                assert!(column.is_some());
                assert_eq!(problems.len(), 1);
                assert!(problems[0].starts_with("task `a`: unknown field `retries`"), "{problems:?}");
            }
            other => panic!("not a parse error: {other:?}"),
        }
        let top = parse("name: j\ntask: []\n").unwrap_err();
        assert!(top.to_string().contains("unknown field `task`"), "{top}");
        let json = parse("{\"tasks\": [{\"id\": \"a\", \"func\": 1}]}").unwrap_err();
        assert!(json.to_string().contains("task `a`: unknown field `func`"), "{json}");
        assert!(matches!(parse("{\"tasks\": [}"), Err(JobSpecError::Parse { format: "JSON", line: Some(1), .. })));
        assert!(parse("  \n").is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let ps = problems(
            "tasks:
  - {id: a, function: 'builtin:nope'}
  - {id: b, exec: [], num_returns: 0}
  - {id: c, function: 'builtin:identity', args: [{ref: zz}], resources: {cpu: -1}}
",
        );
        assert_eq!(ps.len(), 5, "{ps:#?}");
        let err = JobSpecError::Invalid(ps);
        assert!(err.to_string().starts_with("invalid job spec (5 problems):\n  - task `a`: unknown builtin"));
    }
}
