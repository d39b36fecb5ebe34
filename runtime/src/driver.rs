//! Running a planned job through a client: submit every task in
//! topological order, passing references between them, then collect the
//! results of the sink tasks (the ones nothing else consumes).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::client::{Client, ObjectRef, Task, TaskArg};
use crate::error::Error;
use crate::job::{JobPlan, PlanArg};
use crate::strategy::strategy_of;
use crate::value::Value;

/// Submits every task of `plan`; returns each task's return references.
pub async fn submit_plan(client: &Client, plan: &JobPlan) -> Result<Vec<Vec<ObjectRef>>, Error> {
    let mut refs: Vec<Vec<ObjectRef>> = Vec::with_capacity(plan.tasks.len());
    for t in &plan.tasks {
        let mut task = Task::from_descriptor(t.function.clone(), t.id.clone())
            .num_returns(t.num_returns)
            .resources(t.resources.clone())
            .max_retries(t.max_retries)
            .retry_exceptions(t.retry_exceptions);
        if t.strategy.is_some() {
            task = task.strategy(strategy_of(&t.strategy).map_err(Error::Invalid)?);
        }
        for a in &t.args {
            let arg: TaskArg = match a {
                PlanArg::Literal(v) => TaskArg::Value(Value::Json(v.clone())),
                PlanArg::Ref { task, index } => {
                    let r = refs
                        .get(*task)
                        .and_then(|r| r.get(*index as usize))
                        .ok_or_else(|| Error::Invalid(format!("task `{}` refers to a task not yet submitted", t.id)))?;
                    TaskArg::Ref(r.clone())
                }
            };
            task = task.arg(arg);
        }
        refs.push(client.submit_returns(task).await?);
    }
    Ok(refs)
}

/// Runs `plan` to completion and returns the result of every sink task, by
/// task id (a task with several returns gives an array). The first failure
/// is returned as the task's error.
pub async fn run_plan(client: &Client, plan: &JobPlan) -> Result<BTreeMap<String, serde_json::Value>, Error> {
    run_plan_with_progress(client, plan, |_, _| {}).await
}

/// [`run_plan`], calling `progress(done, total)` every [`PROGRESS_INTERVAL`]
/// while the job runs.
pub async fn run_plan_with_progress(
    client: &Client,
    plan: &JobPlan,
    mut progress: impl FnMut(usize, usize) + Send,
) -> Result<BTreeMap<String, serde_json::Value>, Error> {
    let refs = submit_plan(client, plan).await?;
    let firsts: Vec<ObjectRef> = refs.iter().filter_map(|r| r.first().cloned()).collect();
    let watch = async {
        loop {
            tokio::time::sleep(PROGRESS_INTERVAL).await;
            let done = match client.wait(&firsts, firsts.len(), Some(Duration::from_millis(1))).await {
                Ok((ready, _)) => ready.len(),
                Err(_) => continue,
            };
            progress(done, firsts.len());
        }
    };
    let result = tokio::select! {
        r = collect_sinks(client, plan, refs) => r,
        _ = watch => unreachable!("the progress loop never ends"),
    };
    if result.is_ok() {
        progress(firsts.len(), firsts.len());
    }
    result
}

/// How often progress is reported.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

async fn collect_sinks(
    client: &Client,
    plan: &JobPlan,
    refs: Vec<Vec<ObjectRef>>,
) -> Result<BTreeMap<String, serde_json::Value>, Error> {
    let mut sinks: Vec<(usize, ObjectRef)> = Vec::new();
    for (i, t) in plan.tasks.iter().enumerate() {
        if t.is_sink {
            for r in &refs[i] {
                sinks.push((i, r.clone()));
            }
        }
    }
    // Intermediate references are no longer needed by this driver.
    drop(refs);
    let all: Vec<ObjectRef> = sinks.iter().map(|(_, r)| r.clone()).collect();
    let values = client.get_many(&all, None).await?;
    let mut out: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for ((i, _), v) in sinks.iter().zip(values) {
        let t = &plan.tasks[*i];
        let v = v?.to_json_lossy();
        if t.num_returns > 1 {
            match out.entry(t.id.clone()).or_insert_with(|| serde_json::Value::Array(Vec::new())) {
                serde_json::Value::Array(a) => a.push(v),
                other => *other = v,
            }
        } else {
            out.insert(t.id.clone(), v);
        }
    }
    Ok(out)
}
