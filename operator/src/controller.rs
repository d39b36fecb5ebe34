//! Running the operator: client, watches, leader election, metrics server, shutdown.
//!
//! Only the elected leader runs the controller. Losing the lease stops the process with an
//! error (the pod restarts and campaigns again) rather than trying to stop mid-reconcile:
//! at most one replica ever acts on clusters. SIGTERM and Ctrl-C stop the controller
//! gracefully (in-flight reconciles finish) and release the lease.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::args::OperatorArgs;
use crate::crd::TaskCluster;
use crate::error::Error;
use crate::head::RestNodeSource;
use crate::labels;
use crate::metrics::{self, Metrics};
use crate::reconcile::{error_policy, reconcile, Context};

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: OperatorArgs) -> Result<(), Error> {
    let client = Client::try_default()
        .await
        .map_err(|source| Error::Kube { action: "connecting to the API server".into(), source })?;
    let metrics = Arc::new(Metrics::new()?);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let server = tokio::spawn(metrics::serve(metrics.clone(), args.metrics_port, wait_stop(stop_rx.clone())));

    let result = if args.leader_election {
        run_as_leader(&args, client, metrics.clone(), stop_rx.clone()).await
    } else {
        run_controller(&args, client, metrics.clone(), wait_stop(stop_rx.clone())).await;
        Ok(())
    };
    // Whatever ended the controller, stop the metrics server too.
    server.abort();
    result
}

async fn run_as_leader(
    args: &OperatorArgs,
    client: Client,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut builder = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_duration(args.lease_duration_seconds)
        .with_grace(args.lease_duration_seconds.div_ceil(3).max(1))
        .with_field_manager(labels::FIELD_MANAGER);
    if !args.lease_namespace.is_empty() {
        builder = builder.with_namespace(&args.lease_namespace);
    }
    if !args.pod_name.is_empty() {
        builder = builder.with_identity(&args.pod_name);
    }
    let manager = builder.build().await?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(lease = %args.lease_name, "waiting for leadership");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    return Err(Error::LostLease(args.lease_name.clone()));
                }
            }
            _ = stop.changed() => return Ok(()),
        }
    }
    tracing::info!(lease = %args.lease_name, "became the leader");
    metrics.leader.set(1);

    let (lost_tx, lost_rx) = watch::channel(false);
    let mut watch_lease = leading.clone();
    let watcher = tokio::spawn(async move {
        while watch_lease.changed().await.is_ok() {
            if !*watch_lease.borrow_and_update() {
                break;
            }
        }
        let _ = lost_tx.send(true);
    });
    let until = {
        let stop = stop.clone();
        let lost = lost_rx.clone();
        async move {
            tokio::select! {
                _ = wait_stop(stop) => {}
                _ = wait_stop(lost) => {}
            }
        }
    };
    run_controller(args, client, metrics.clone(), until).await;
    metrics.leader.set(0);
    watcher.abort();
    let lost = *lost_rx.borrow();
    // Closing the channel makes the manager's task release the lease and finish.
    drop(leading);
    match task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                tracing::warn!(error = %e, "releasing the lease failed");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "lease manager failed"),
        Err(e) => tracing::warn!(error = %e, "lease manager task failed"),
    }
    if lost && !*stop.borrow() {
        return Err(Error::LostLease(args.lease_name.clone()));
    }
    Ok(())
}

async fn run_controller(
    args: &OperatorArgs,
    client: Client,
    metrics: Arc<Metrics>,
    until: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (clusters, pods): (Api<TaskCluster>, Api<Pod>) = if args.watch_namespace.is_empty() {
        (Api::all(client.clone()), Api::all(client.clone()))
    } else {
        (Api::namespaced(client.clone(), &args.watch_namespace), Api::namespaced(client.clone(), &args.watch_namespace))
    };
    // One pod cache, shared by the controller (as a trigger) and the reconciler (to read).
    let (pod_store, pod_writer) = reflector::store();
    let pod_stream = reflector(pod_writer, watcher(pods, watcher::Config::default().labels(labels::CLUSTER)))
        .default_backoff()
        .touched_objects();
    let reporter = Reporter {
        controller: labels::FIELD_MANAGER.to_string(),
        instance: (!args.pod_name.is_empty()).then(|| args.pod_name.clone()),
    };
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            pod_store,
            Recorder::new(client, reporter),
            Arc::new(RestNodeSource::default()),
            metrics,
            args.head_port,
        )
        .with_operator_namespace(&args.operator_namespace),
    );
    tracing::info!(namespace = %args.watch_namespace, "reconciling TaskClusters");
    Controller::new(clusters, watcher::Config::default())
        .owns_stream(pod_stream)
        .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(until)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

async fn wait_stop(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            // The sender is gone: nobody can ask to stop any more; wait forever.
            std::future::pending::<()>().await;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
