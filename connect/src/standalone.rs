//! `spate connect standalone WORKER.properties [CONNECTOR.properties ...]`:
//! Kafka's ConnectStandalone. Any of the files may be a YAML pipeline
//! (`.yaml`, `.yml`; see `yaml.rs`). Reads the configs, starts the worker and its
//! connectors, serves the REST API, and on SIGTERM or SIGINT stops every
//! task (sinks flush and commit) and writes the offsets file a last time.

use std::io::Write;
use std::path::PathBuf;

use crate::config::WorkerConfig;
use crate::error::{ConnectError, Result};
use crate::props::Props;
use crate::worker::Worker;
use crate::yaml;

/// Runs a standalone worker until SIGTERM or SIGINT.
pub fn run(worker_config: &std::path::Path, connector_configs: &[PathBuf]) -> Result<()> {
    let worker_props = yaml::load_config_file(worker_config)?;
    let config = WorkerConfig::from_props(&worker_props)?;
    if !config.unknown_keys.is_empty() {
        tracing::warn!(
            "{}: keys not used by Spate Connect (ignored): {}",
            worker_config.display(),
            config.unknown_keys.join(", ")
        );
    }
    let connectors: Vec<Props> =
        connector_configs.iter().map(|path| yaml::load_config_file(path)).collect::<Result<_>>()?;
    for (path, props) in connector_configs.iter().zip(&connectors) {
        if props.get("name").is_none_or(|n| n.trim().is_empty()) {
            return Err(ConnectError::Config(format!("{}: Missing required configuration \"name\"", path.display())));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("connect-io")
        .enable_all()
        .build()
        .map_err(|e| ConnectError::io("starting the tokio runtime", e))?;
    let host = if config.rest_host.is_empty() { "0.0.0.0".to_string() } else { config.rest_host.clone() };
    let port = config.rest_port;
    // The REST port first: a port in use fails the start before anything runs.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((host.as_str(), port)))
        .map_err(|e| ConnectError::io(format!("REST listener on {host}:{port}"), e))?;
    let address = listener.local_addr().map_err(|e| ConnectError::io("REST listener address", e))?;
    let worker = runtime.block_on(Worker::new(config, runtime.handle().clone()))?;
    for props in connectors {
        let name = props.get("name").cloned().unwrap_or_default();
        if let Err(error) = worker.put_connector(&name, props, false) {
            let _ = worker.shutdown();
            return Err(ConnectError::Config(format!("connector {name}: {error}")));
        }
    }
    let flusher = worker.spawn_offset_flusher()?;
    {
        let mut stdout = std::io::stdout().lock();
        // The line tests and scripts wait for; nothing to do if stdout is gone.
        let _ = writeln!(
            stdout,
            "spate connect standalone: REST API on http://{address}, {} connectors",
            worker.list().len()
        );
        let _ = stdout.flush();
    }
    let served = runtime.block_on(crate::rest::serve(listener, worker.clone(), shutdown_signal()));
    tracing::info!("stopping the worker");
    let stopped = worker.shutdown();
    if flusher.join().is_err() {
        tracing::error!("the offset flusher panicked");
    }
    served.map_err(|e| ConnectError::io("serving the REST API", e))?;
    stopped
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
