//! Starting and stopping a broker: one pinned glommio executor per shard.
//!
//! Start-up: shard 0 binds the main port first (so port 0 resolves to one
//! real port), then the other shards bind the same port (SO_REUSEPORT) and
//! their own; every shard opens (recovers) the partitions it owns; only when
//! all are ready do they start accepting. Shutdown (SIGTERM/SIGINT or
//! [`BrokerHandle::shutdown`]): every shard stops accepting, closes its
//! logs (flushing what is pending, writing the clean-shutdown marker), and
//! ends; once all have, the broker writes its clean-stop marker
//! (`clean_stop.rs`, KIP-966).

use std::fs::File;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::catalog::{Catalog, CatalogError};
use crate::config::{BrokerConfig, ConfigError, parse_durability};
use crate::security::SecurityProtocol;
use crate::shard::{Ports, Shard, ShardOp, Shared};
use crate::wire::conn::{Security, serve_tcp};

const LOCK_FILE: &str = "broker.lock";
/// The controller's Raft log and state, under the data directory.
pub(crate) const METADATA_DIR: &str = "metadata";
/// How long `start` waits for this broker's registration.
const REGISTRATION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("data directory {0} is in use by another broker")]
    DataDirLocked(String),
    #[error("shard {shard}: {message}")]
    Shard { shard: usize, message: String },
    #[error("starting the broker: {0}")]
    Start(String),
    #[error("starting shard {shard}: {source}")]
    Executor { shard: usize, source: glommio::GlommioError<()> },
    #[error(transparent)]
    Tls(#[from] crate::security::tls::TlsError),
}

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    pub(crate) shared: Arc<Shared>,
    executors: Vec<ExecutorJoinHandle<()>>,
    /// Held for the broker's life: the data directory's lock.
    _lock: File,
}

impl BrokerHandle {
    /// The main port's address.
    pub fn addr(&self) -> SocketAddr {
        let port = self.shared.ports.get().map_or(0, |p| p.main);
        format!("{}:{port}", self.shared.config.advertised_host())
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn shard_ports(&self) -> Vec<u16> {
        self.shared.ports.get().map(|p| p.shards.clone()).unwrap_or_default()
    }

    /// The first Kafka listener's address, if there is one.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_addrs().into_iter().next().map(|(_, addr)| addr)
    }

    /// Every Kafka listener's name and address (as advertised, with the
    /// port it got), in the order configured.
    pub fn kafka_addrs(&self) -> Vec<(String, SocketAddr)> {
        let Some(ports) = self.shared.ports.get() else { return Vec::new() };
        let listeners = &self.shared.kafka_listeners;
        (0..listeners.len())
            .filter_map(|index| {
                let port = *ports.kafka.get(index)?;
                let (host, _) = self.shared.config.kafka_advertised(listeners, index, port).ok()?;
                let addr = format!("{host}:{port}").parse().ok()?;
                Some((listeners[index].name.clone(), addr))
            })
            .collect()
    }

    /// The port `/metrics` is served on, if enabled.
    pub fn metrics_port(&self) -> Option<u16> {
        self.shared.metrics_port.get().copied()
    }

    pub fn shard_count(&self) -> usize {
        self.shared.shard_count
    }

    /// Asks every shard to stop; `wait` returns once they have.
    pub fn shutdown(&self) {
        request_shutdown(&self.shared);
    }

    /// A function that asks the broker to stop (for signal handlers).
    pub fn shutdown_trigger(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || request_shutdown(&shared)
    }

    /// Waits for every shard to end.
    pub fn wait(self) -> Result<(), ServeError> {
        let mut first_error = None;
        for (shard, executor) in self.executors.into_iter().enumerate() {
            if let Err(err) = executor.join() {
                tracing::error!(shard, "shard ended with an error: {err}");
                first_error.get_or_insert(ServeError::Shard { shard, message: err.to_string() });
            }
        }
        // After the shards: they may have asked it for ISR changes to the end.
        if let Some(controller) = self.shared.controller.get() {
            controller.shutdown();
        }
        // Every log closed (flushed, synced): the next start may count on
        // every write of this process (KIP-966's clean shutdown).
        if first_error.is_none()
            && !self.shared.close_failed.load(std::sync::atomic::Ordering::SeqCst)
            && let Err(err) = crate::clean_stop::mark_clean_stop(&self.shared.config.data_dir)
        {
            tracing::error!("writing the clean-stop marker: {err}; the next start will read as unclean");
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn request_shutdown(shared: &Shared) {
    for mailbox in &shared.mailboxes {
        let _ = mailbox.unbounded_send(ShardOp::Shutdown);
    }
}

/// What a shard reports once it is ready to accept (or why it is not).
/// (shard, main port, own port, each Kafka listener's port).
type Ready = Result<(usize, u16, u16, Vec<u16>), (usize, String)>;

/// Starts a broker and returns once every shard accepts connections.
pub fn start(config: BrokerConfig) -> Result<BrokerHandle, ServeError> {
    config.validate()?;
    crate::security::check_config(&config)?;
    let default_durability = parse_durability(&config.durability)?;
    let data_dir = config.data_dir.clone();
    let shown = data_dir.display().to_string();
    let io = |source| ServeError::DataDir { path: shown.clone(), source };
    create_dir_durable(&data_dir.join(crate::catalog::TOPICS_DIR)).map_err(io)?;
    let lock = File::create(data_dir.join(LOCK_FILE)).map_err(io)?;
    if lock.try_lock().is_err() {
        return Err(ServeError::DataDirLocked(shown));
    }
    refuse_catalog_without_metadata(&data_dir)?;
    // Checked before the stop marker is consumed: a start refused here
    // changes nothing on disk.
    let kafka_listeners = config.kafka_listeners()?;
    refuse_ports_in_use(&config, &kafka_listeners)?;
    // Loaded before anything binds: a missing or bad certificate stops the
    // start with the file named, not the first client's handshake.
    let tls =
        match kafka_listeners.iter().any(|l| l.protocol.uses_tls()) || config.metrics_tls || config.native_tls()? {
            true => Some(Arc::new(crate::security::tls::TlsServer::load(&config)?)),
            false => None,
        };
    let controller_tls = crate::security::tls::controller_tls(&config)?;
    let oauth = crate::security::sasl::OAuthValidator::from_config(&config)?.map(Arc::new);
    // Before any log opens: from here on, a crash reads as unclean.
    let restart =
        crate::clean_stop::on_start(&data_dir, default_durability == spate_engine::Durability::Always).map_err(io)?;
    let shard_count = config.shard_count();
    let mut mailboxes = Vec::with_capacity(shard_count);
    let mut inboxes = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (tx, rx) = mpsc::unbounded();
        mailboxes.push(tx);
        inboxes.push(rx);
    }
    let connection_limits = Arc::new(crate::wire::connection_limits::ConnectionLimits::new(
        config.max_connections_per_ip,
        config.connection_overrides()?,
        config.max_connection_creation_rate,
    ));
    let shared = Arc::new(Shared {
        connection_limits,
        kafka_listeners,
        tls,
        controller_tls,
        oauth: arc_swap::ArcSwapOption::new(oauth),
        quota_meters: Default::default(),
        config,
        default_durability,
        shard_count,
        catalog: ArcSwap::from_pointee(Catalog::default()),
        mailboxes,
        ports: OnceLock::new(),
        metrics_port: OnceLock::new(),
        controller: OnceLock::new(),
        close_failed: std::sync::atomic::AtomicBool::new(false),
    });
    let (ready_tx, ready_rx) = std_mpsc::channel::<Ready>();
    let mut executors = Vec::with_capacity(shard_count);
    let mut go = Vec::with_capacity(shard_count);
    let mut main_port = shared.config.port;
    let mut kafka_ports: Vec<u16> = shared.kafka_listeners.iter().map(|l| l.port).collect();
    let mut shard_ports = vec![0u16; shard_count];
    let mut failure = None;
    for (shard, inbox) in inboxes.into_iter().enumerate() {
        let (go_tx, go_rx) = oneshot::channel();
        go.push(go_tx);
        let placement = if shared.config.pin_cores {
            Placement::Fixed(shard % std::thread::available_parallelism().map_or(1, |n| n.get()))
        } else {
            Placement::Unbound
        };
        let (ready, shared_for_shard) = (ready_tx.clone(), shared.clone());
        let (port, kafka) = (main_port, kafka_ports.clone());
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("spate-shard-{shard}"))
            .io_memory(shared.config.io_memory_bytes);
        if shared.config.spin_before_park_us > 0 {
            builder = builder.spin_before_park(std::time::Duration::from_micros(shared.config.spin_before_park_us));
        }
        let spawned = builder.spawn(move || run_shard(shard, shared_for_shard, inbox, port, kafka, ready, go_rx));
        match spawned {
            Ok(executor) => executors.push(executor),
            Err(source) => {
                failure = Some(ServeError::Executor { shard, source });
                break;
            }
        }
        // Shard 0 resolves the main port for the others; the others report
        // in any order.
        if shard == 0 {
            match ready_rx.recv() {
                Ok(Ok((_, main, own, kafka))) => {
                    main_port = main;
                    kafka_ports = kafka;
                    shard_ports[0] = own;
                }
                Ok(Err((shard, message))) => {
                    failure = Some(ServeError::Shard { shard, message });
                    break;
                }
                Err(_) => {
                    failure = Some(ServeError::Start("shard 0 ended before it was ready".into()));
                    break;
                }
            }
        }
    }
    drop(ready_tx);
    if failure.is_none() {
        for _ in 1..executors.len() {
            match ready_rx.recv() {
                Ok(Ok((shard, _, own, _))) => shard_ports[shard] = own,
                Ok(Err((shard, message))) => {
                    failure = Some(ServeError::Shard { shard, message });
                    break;
                }
                Err(_) => {
                    failure = Some(ServeError::Start("a shard ended before it was ready".into()));
                    break;
                }
            }
        }
    }
    let handle = BrokerHandle { shared: shared.clone(), executors, _lock: lock };
    if let Some(err) = failure {
        // Dropping the go senders tells every started shard to close its
        // logs and end.
        drop(go);
        let _ = handle.wait();
        return Err(err);
    }
    let _ = shared.ports.set(Ports { main: main_port, shards: shard_ports.clone(), kafka: kafka_ports.clone() });
    // The controller starts once this broker's ports are known (it
    // registers them); it replays the metadata log before it returns, so
    // the catalog below is what this node last knew.
    let controller = match start_controller(&shared, main_port, shard_ports, &kafka_ports, restart) {
        Ok(controller) => controller,
        Err(err) => {
            drop(go);
            let _ = handle.wait();
            return Err(err);
        }
    };
    if wait_until_registered(&shared, &controller) {
        // The controller has how the previous process ended (KIP-966):
        // from now on this boot is the one to compare with.
        // A failure leaves the older boot id: the next start may then read
        // as after a reboot, which is only cautious.
        if let Err(err) = crate::clean_stop::record_boot_id(&shared.config.data_dir) {
            tracing::warn!("recording the boot id: {err}");
        }
    }
    ensure_offsets_topic(&shared, &controller);
    shared.catalog.store(Arc::new(Catalog::from_image(&controller.image())));
    let _ = shared.controller.set(controller);
    // Every shard opens (recovers) its partitions and then accepts.
    let (accepting_tx, accepting_rx) = std_mpsc::channel::<Result<usize, (usize, String)>>();
    for go in go {
        let _ = go.send(accepting_tx.clone());
    }
    drop(accepting_tx);
    for _ in 0..handle.executors.len() {
        match accepting_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err((shard, message))) => {
                handle.shutdown();
                let _ = handle.wait();
                return Err(ServeError::Shard { shard, message });
            }
            Err(_) => {
                let _ = handle.wait();
                return Err(ServeError::Start("a shard ended before it accepted".into()));
            }
        }
    }
    Ok(handle)
}

/// Creates `dir` and its missing parents so that they survive power loss:
/// a new directory's entry is durable only once its parent is synced, so
/// each created one's parent is, outermost first. Returns the directories
/// created. (Topic and partition directories below `topics/` are created
/// the same way by the engine when a partition opens.)
fn create_dir_durable(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut created: Vec<std::path::PathBuf> =
        dir.ancestors().take_while(|path| !path.as_os_str().is_empty() && !path.exists()).map(Into::into).collect();
    created.reverse();
    std::fs::create_dir_all(dir)?;
    for path in &created {
        let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        File::open(parent)?.sync_all()?;
    }
    Ok(created)
}

/// Before the metadata log, topics lived in catalog.json; a data directory
/// with topic data but no metadata log would lose them (the controller
/// would delete the orphan directories): refuse it.
fn refuse_catalog_without_metadata(data_dir: &std::path::Path) -> Result<(), ServeError> {
    let metadata_dir = data_dir.join(METADATA_DIR);
    let topics_dir = data_dir.join(crate::catalog::TOPICS_DIR);
    let has_topics = std::fs::read_dir(&topics_dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if has_topics && !metadata_dir.exists() {
        return Err(ServeError::Catalog(CatalogError::Invalid {
            path: metadata_dir,
            reason: format!("missing while {} holds topic data; restore it", topics_dir.display()),
        }));
    }
    Ok(())
}

fn start_controller(
    shared: &Arc<Shared>,
    main_port: u16,
    shard_ports: Vec<u16>,
    kafka_ports: &[u16],
    restart: spate_replication::BrokerRestart,
) -> Result<spate_replication::Controller, ServeError> {
    let config = &shared.config;
    let voters = config.controller_voters()?;
    let controller_port = voters.iter().find(|(id, _)| *id == config.node_id).map_or(0, |(_, addr)| addr.port());
    let mut quorum = spate_replication::QuorumConfig::new(config.node_id, voters, config.data_dir.join(METADATA_DIR));
    quorum.broker_heartbeat_interval_ms = config.broker_heartbeat_interval_ms;
    quorum.broker_session_timeout_ms = config.broker_session_timeout_ms;
    quorum.restart = restart;
    if quorum.voters.len() > 1 {
        quorum.tls = shared.controller_tls.clone();
    }
    let mut kafka_listeners = Vec::new();
    for (index, listener) in shared.kafka_listeners.iter().enumerate() {
        let (host, port) = config.kafka_advertised(&shared.kafka_listeners, index, kafka_ports[index])?;
        kafka_listeners.push(spate_replication::KafkaEndpoint { name: listener.name.clone(), host, port });
    }
    // The first listener also in the fields brokers of older versions read.
    let (kafka_host, kafka_port) = kafka_listeners.first().map_or((String::new(), 0), |e| (e.host.clone(), e.port));
    let endpoints = spate_replication::BrokerEndpoints {
        kafka_host,
        kafka_port,
        kafka_listeners,
        host: config.advertised_host().to_string(),
        port: main_port,
        shard_ports,
        controller_port,
    };
    spate_replication::Controller::start(quorum, endpoints)
        .map_err(|err| ServeError::Start(format!("controller: {err}")))
}

/// Creates `__consumer_offsets` and `__transaction_state` through the
/// controller if the metadata has none yet, with min(3, live brokers)
/// replicas (Kafka's offsets.topic.replication.factor=3 and
/// transaction.state.log.replication.factor=3; a cluster of one gets one).
///
/// At the first start of a cluster not every broker has registered yet:
/// Kafka refuses to create the topic until enough brokers exist; here it
/// waits until as many brokers as there are voters in `controller_quorum`
/// (up to three) are registered and unfenced, or
/// `OFFSETS_TOPIC_BROKERS_WAIT_MS` has passed since this broker started,
/// then creates it with the live brokers there are. A cluster of one (or
/// one whose voters are all up) creates it before `start` returns; else a
/// thread keeps at it in the background, and group (transaction) requests
/// get `NotReady` (COORDINATOR_NOT_AVAILABLE) until the topic exists.
fn ensure_offsets_topic(shared: &Shared, controller: &spate_replication::Controller) {
    ensure_internal_topic(
        shared,
        controller,
        spate_flatbuf::CONSUMER_OFFSETS_TOPIC,
        shared.config.group_offsets_partitions,
        crate::group::OFFSETS_TOPIC_REPLICATION_FACTOR,
        crate::group::offsets_topic_request,
    );
    // Transactions' coordinators, beside the groups' (Kafka creates it at
    // the first FindCoordinator for a transactional id; at the first start
    // here, so that no client waits on a topic creation).
    ensure_internal_topic(
        shared,
        controller,
        crate::txn::TRANSACTION_STATE_TOPIC,
        shared.config.transaction_state_partitions,
        crate::txn::TXN_TOPIC_REPLICATION_FACTOR,
        crate::txn::txn_topic_request,
    );
}

/// Creates an internal topic at the cluster's first start (`name`, with
/// `partitions` and up to `replication_factor_max` replicas), once enough
/// brokers registered or after waiting long enough for them; in the
/// background if it cannot be created at once.
fn ensure_internal_topic(
    shared: &Shared,
    controller: &spate_replication::Controller,
    name: &'static str,
    partitions: u32,
    replication_factor_max: usize,
    make_request: fn(u32, u16) -> spate_replication::ControllerRequest,
) {
    let has_topic = move |controller: &spate_replication::Controller| controller.image().topics.contains_key(name);
    if has_topic(controller) {
        return;
    }
    let voters = shared.config.controller_voters().map_or(0, |voters| voters.len());
    let wanted = voters.clamp(1, replication_factor_max);
    let give_up_waiting =
        std::time::Instant::now() + std::time::Duration::from_millis(crate::limits::OFFSETS_TOPIC_BROKERS_WAIT_MS);
    // The request to send now, if it is time: enough brokers, or waited
    // long enough for them.
    let request = move |controller: &spate_replication::Controller| {
        let live = controller.image().unfenced_brokers().len();
        if live == 0 || (live < wanted && std::time::Instant::now() < give_up_waiting) {
            return None;
        }
        let replication_factor = live.min(replication_factor_max) as u16;
        if replication_factor < wanted as u16 {
            tracing::warn!(
                live,
                voters,
                "creating {name} with {replication_factor} replicas: not every voter registered in time"
            );
        }
        Some(make_request(partitions, replication_factor))
    };
    if let Some(now) = request(controller) {
        match futures::executor::block_on(controller.request(now)) {
            Ok(_) | Err(spate_replication::ControllerError::TopicAlreadyExists) => return,
            Err(err) => tracing::warn!("creating {name}: {err}; retrying in the background"),
        }
    }
    let controller = controller.clone();
    let spawned = std::thread::Builder::new().name("spate-internal-topic".into()).spawn(move || {
        while !has_topic(&controller) {
            let Some(now) = request(&controller) else {
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            };
            match futures::executor::block_on(controller.request(now)) {
                Ok(_) | Err(spate_replication::ControllerError::TopicAlreadyExists) => return,
                Err(spate_replication::ControllerError::Shutdown) => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_secs(1)),
            }
        }
    });
    if let Err(err) = spawned {
        tracing::error!("cannot start the thread that creates {name}: {err}");
    }
}

/// Waits (bounded) until the controller has this broker registered, as
/// this process, and unfenced, so that a single broker serves its
/// partitions as soon as `start` returns. In a cluster whose quorum is not
/// up yet it gives up after a while and serves anyway: partitions get
/// leaders when the quorum forms.
/// Whether this start's registration was applied (false: it timed out,
/// and the broker serves anyway).
fn wait_until_registered(shared: &Shared, controller: &spate_replication::Controller) -> bool {
    let deadline = std::time::Instant::now() + REGISTRATION_WAIT;
    let node_id = shared.config.node_id;
    let incarnation = controller.incarnation();
    while std::time::Instant::now() < deadline {
        let image = controller.image();
        let registered = image.brokers.get(&node_id).is_some_and(|b| b.incarnation == incarnation && !b.fenced);
        let leaderless_mine = image.topics.values().any(|topic| {
            topic
                .partitions
                .iter()
                .any(|p| p.leader < 0 && (p.isr.contains(&node_id) || (p.isr.is_empty() && p.elr.contains(&node_id))))
        });
        // The cluster secret too: producer ids are made with it, and
        // replicas prove themselves with it.
        if registered && !leaderless_mine && image.cluster_secret_hex.is_some() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!(node_id, "not registered with the controller yet; serving anyway");
    false
}

/// `start`, then run until SIGTERM or SIGINT (a second signal exits at
/// once), printing where it listens.
pub fn run(config: BrokerConfig) -> Result<(), ServeError> {
    let data_dir = config.data_dir.display().to_string();
    let handle = start(config)?;
    let trigger = handle.shutdown_trigger();
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|source| ServeError::DataDir { path: "signal handler".into(), source })?;
    let shared = handle.shared.clone();
    std::thread::Builder::new()
        .name("spate-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reload_tls(&shared);
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal, "shutting down: flushing and closing every partition");
                    trigger();
                } else {
                    tracing::warn!("second signal: exiting without a clean shutdown");
                    std::process::exit(130);
                }
            }
        })
        .map_err(|source| ServeError::DataDir { path: "signal thread".into(), source })?;
    let ports = handle.shard_ports();
    let kafka: Vec<String> = handle.kafka_addrs().iter().map(|(name, addr)| format!("{name}://{addr}")).collect();
    let kafka = if kafka.is_empty() { String::new() } else { format!(", Kafka protocol on {}", kafka.join(", ")) };
    let open = unauthenticated_listeners(&handle.shared);
    let authentication = if open.is_empty() { "" } else { "; without authentication on " };
    println!(
        "spate broker {} listening on {} (shards {}: ports {:?}){kafka}, data in {data_dir}{authentication}{}",
        handle.shared.config.node_id,
        handle.addr(),
        handle.shard_count(),
        ports,
        open.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", "),
    );
    let exposed: Vec<String> =
        open.iter().filter(|(_, host)| !is_loopback(host)).map(|(name, host)| format!("{name} ({host})")).collect();
    if !exposed.is_empty() {
        let (noun, verb) = if exposed.len() == 1 { ("listener", "accepts") } else { ("listeners", "accept") };
        let warning = format!(
            "WARNING: {noun} {} {verb} clients beyond this machine without authentication: anyone who reaches \
             them may read, write and delete every topic. Use SASL_SSL (docs/security.md) or bind 127.0.0.1.",
            exposed.join(", ")
        );
        // Loud even when the log level hides warnings.
        if tracing::enabled!(tracing::Level::WARN) {
            tracing::warn!("{warning}");
        } else {
            eprintln!("{warning}");
        }
    }
    handle.wait()?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Every shard binds its ports with SO_REUSEPORT, which the kernel also
/// grants to any other process of the same user that asks for it: a second
/// broker started on the same ports would not fail but take half of the
/// first one's connections. So a configured port another socket listens
/// on is refused first. The kernel's table of listening sockets says so
/// (a trial bind would also fail on the connections a killed broker left
/// behind, which must not stop its restart on the same port).
fn refuse_ports_in_use(config: &BrokerConfig, kafka: &[crate::config::KafkaListener]) -> Result<(), ServeError> {
    let shards = config.shard_count();
    let host = || config.listen_host.clone();
    // (what binds it, host, port) for every port this broker binds.
    let mut ports: Vec<(String, String, u16)> = vec![("the native port".into(), host(), config.port)];
    let shard_base = match config.shard_port_base {
        Some(base) => Some(base),
        None if config.port != 0 => Some(config.port.saturating_add(1)),
        None => None,
    };
    if let Some(base) = shard_base {
        ports.extend((0..shards).map(|i| (format!("shard {i}'s native port"), host(), base.saturating_add(i as u16))));
    }
    ports.extend(kafka.iter().map(|l| (format!("the Kafka listener {}", l.name), l.host.clone(), l.port)));
    if let Ok(voters) = config.controller_voters()
        && let Some((_, own)) = voters.iter().find(|(id, _)| *id == config.node_id)
    {
        ports.push(("the controller port".into(), own.ip().to_string(), own.port()));
    }
    let ips = |host: &str, port: u16| -> Vec<std::net::IpAddr> {
        use std::net::ToSocketAddrs;
        (host, port).to_socket_addrs().map(|addrs| addrs.map(|a| a.ip()).collect()).unwrap_or_default()
    };
    let overlap = |a: &[std::net::IpAddr], b: &[std::net::IpAddr]| {
        a.iter().any(|x| b.iter().any(|y| x.is_unspecified() || y.is_unspecified() || x == y))
    };
    let ports: Vec<(String, String, u16, Vec<std::net::IpAddr>)> = ports
        .into_iter()
        .filter(|(_, _, port)| *port != 0)
        .map(|(what, host, port)| {
            let ours = ips(&host, port);
            (what, host, port, ours)
        })
        .collect();
    // SO_REUSEPORT lets this broker bind one port twice too: a Kafka
    // listener on a shard's native port would get half of the native
    // clients' connections, and answer them in the wrong protocol.
    for (i, (what, host, port, ours)) in ports.iter().enumerate() {
        if let Some((other, ..)) =
            ports[..i].iter().find(|(_, _, their_port, theirs)| their_port == port && overlap(ours, theirs))
        {
            return Err(ServeError::Start(format!(
                "{host}:{port} is configured twice: for {other} and for {what} (shard ports are the native port + 1, + 2, ...)"
            )));
        }
    }
    // A broker killed a moment ago may still hold its listening sockets:
    // io_uring drops the files of a dead process's ring asynchronously,
    // after the process is gone. So a taken port is looked at again for a
    // while before the start is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(crate::limits::PORT_FREE_WAIT_MS);
    loop {
        let listening = listening_sockets();
        let taken = ports.iter().find_map(|(_, host, port, ours)| {
            let theirs = listening.iter().find(|theirs| theirs.port() == *port && overlap(ours, &[theirs.ip()]))?;
            Some((host, port, *theirs))
        });
        let Some((host, port, theirs)) = taken else { return Ok(()) };
        if std::time::Instant::now() >= deadline {
            return Err(ServeError::Start(format!(
                "{host}:{port} is not free (a socket listens on {theirs}): is another broker running?"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The addresses TCP sockets listen on in this network namespace, from
/// /proc/net/tcp and tcp6 (Linux, which io_uring means anyway); empty if
/// they cannot be read.
fn listening_sockets() -> Vec<SocketAddr> {
    const LISTEN: &str = "0A";
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&LISTEN)) = (fields.get(1), fields.get(3)) else { continue };
            if let Some(addr) = proc_net_address(local) {
                sockets.push(addr);
            }
        }
    }
    sockets
}

/// `0100007F:2384` (an IPv4 address as a host-order word, the port) or
/// its 32-digit IPv6 form (four host-order words), as /proc/net/tcp* write
/// them.
fn proc_net_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Reads the TLS stores again (SIGHUP): new connections get the new
/// certificate; a bad store keeps the old one, said in the log.
fn reload_tls(shared: &Shared) {
    if shared.oauth.load().is_some() {
        match crate::security::sasl::OAuthValidator::from_config(&shared.config) {
            Ok(validator) => {
                shared.oauth.store(validator.map(Arc::new));
                tracing::info!("SIGHUP: the OAUTHBEARER JWKS reloaded");
            }
            Err(err) => tracing::error!("SIGHUP: the OAUTHBEARER JWKS not reloaded, the previous keys stay: {err}"),
        }
    }
    if let Some(controller) = &shared.controller_tls {
        match crate::security::tls::reload_controller_tls(controller, &shared.config) {
            Ok(()) => tracing::info!("SIGHUP: the controller port's TLS certificates reloaded"),
            Err(err) => tracing::error!("SIGHUP: the controller port's TLS certificates not reloaded: {err}"),
        }
    }
    let Some(tls) = &shared.tls else {
        tracing::info!("SIGHUP: no TLS listener, nothing to reload");
        return;
    };
    match tls.reload(&shared.config) {
        Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded; new connections use them"),
        Err(err) => tracing::error!("SIGHUP: TLS certificates not reloaded, the previous ones stay in use: {err}"),
    }
}

/// The listeners (name, host) where a client is served without
/// authenticating: the native ports (no authentication there yet) and
/// Kafka listeners with neither SASL nor required client certificates.
fn unauthenticated_listeners(shared: &Shared) -> Vec<(String, String)> {
    let mut open = vec![("native".to_string(), shared.config.listen_host.clone())];
    for listener in shared.kafka_listeners.iter().filter(|l| !shared.config.authenticates(l)) {
        open.push((listener.name.clone(), listener.host.clone()));
    }
    open
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn run_shard(
    id: usize,
    shared: Arc<Shared>,
    mut inbox: mpsc::UnboundedReceiver<ShardOp>,
    main_port: u16,
    kafka_ports: Vec<u16>,
    ready: std_mpsc::Sender<Ready>,
    go: oneshot::Receiver<std_mpsc::Sender<Result<usize, (usize, String)>>>,
) {
    let shard = Shard::new(id, shared.clone());
    let host = shared.config.listen_host.clone();
    let own_port = match shared.config.shard_port_base {
        Some(base) => base.saturating_add(id as u16),
        None if shared.config.port == 0 => 0,
        None => shared.config.port.saturating_add(1 + id as u16),
    };
    let bound = (|| {
        let main = TcpListener::bind((host.as_str(), main_port))
            .map_err(|err| format!("binding {host}:{main_port}: {err}"))?;
        let own =
            TcpListener::bind((host.as_str(), own_port)).map_err(|err| format!("binding {host}:{own_port}: {err}"))?;
        let metrics = if id == 0 && !shared.config.metrics_listen.is_empty() {
            let addr = &shared.config.metrics_listen;
            Some(TcpListener::bind(addr.as_str()).map_err(|err| format!("binding metrics on {addr}: {err}"))?)
        } else {
            None
        };
        let mut kafka = Vec::new();
        for (listener, port) in shared.kafka_listeners.iter().zip(&kafka_ports) {
            let socket = TcpListener::bind((listener.host.as_str(), *port)).map_err(|err| {
                format!("binding the Kafka listener {} on {}:{port}: {err}", listener.name, listener.host)
            })?;
            kafka.push(socket);
        }
        Ok::<_, String>((main, own, metrics, kafka))
    })();
    let (main, own, metrics, kafka) = match bound {
        Ok(bound) => bound,
        Err(message) => {
            let _ = ready.send(Err((id, message)));
            return;
        }
    };
    if let Some(metrics) = &metrics {
        let _ = shared.metrics_port.set(port_of(metrics));
    }
    let (main_port, own_port) = (port_of(&main), port_of(&own));
    let kafka_ports = kafka.iter().map(port_of).collect();
    let _ = ready.send(Ok((id, main_port, own_port, kafka_ports)));
    let Ok(accepting) = go.await else {
        close_all(&shard).await;
        return;
    };
    let catalog = shared.catalog.load_full();
    if let Err(message) = shard.reconcile(&catalog).await {
        // The partitions that failed are offline on this broker (logged,
        // StorageError to clients, in `topic describe` and the metrics);
        // every other partition is served.
        tracing::error!(shard = id, "serving with partitions offline: {message}");
    }
    // The groups of the offsets partitions this broker leads (their loads
    // started at the end of the reconcile above).
    if let Err(message) = crate::group::wait_loaded(&shard).await {
        let _ = accepting.send(Err((id, message)));
        close_all(&shard).await;
        return;
    }
    shard.spawn_isr_checks();
    shard.spawn_failed_log_checks();
    crate::txn::spawn_timeout_checks(&shard);
    if id == 0 {
        crate::metadata::spawn_follower(shard.clone());
    }
    let _ = accepting.send(Ok(id));
    accept_loop(&shard, main, Listener::Native);
    accept_loop(&shard, own, Listener::Native);
    for (index, socket) in kafka.into_iter().enumerate() {
        accept_loop(&shard, socket, Listener::Kafka(index));
    }
    if let Some(metrics) = metrics {
        accept_loop(&shard, metrics, Listener::Metrics);
    }
    while let Some(op) = inbox.next().await {
        if let ShardOp::Shutdown = op {
            break;
        }
        shard.execute(op);
    }
    shard.stopping.set(true);
    shard.stop_listeners.borrow_mut().clear();
    // Classic joins and syncs held by this shard's groups are answered.
    crate::group::classic::stop(&shard);
    close_all(&shard).await;
    tracing::debug!(shard = id, "shard stopped");
}

/// Closes every log of the shard; a failure makes the stop unclean.
async fn close_all(shard: &Rc<Shard>) {
    if !shard.close_all().await {
        shard.shared.close_failed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map_or(0, |addr| addr.port())
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Native,
    /// The Kafka listener at this index of `Shared::kafka_listeners`.
    Kafka(usize),
    Metrics,
}

fn accept_loop(shard: &Rc<Shard>, listener: TcpListener, kind: Listener) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    shard.stop_listeners.borrow_mut().push(stop_tx);
    let shard = shard.clone();
    let security = match kind {
        Listener::Kafka(index) => {
            let listener = &shard.shared.kafka_listeners[index];
            Security {
                listener: listener.name.as_str().into(),
                protocol: listener.protocol,
                tls: if listener.protocol.uses_tls() { shard.shared.tls.clone() } else { None },
            }
        }
        // With native TLS the native ports take TLS clients and plaintext
        // brokers alike (`wire::conn::serve_tcp` tells them apart).
        Listener::Native if shard.shared.config.native_tls().unwrap_or(false) => {
            Security { listener: "NATIVE".into(), protocol: SecurityProtocol::Ssl, tls: shard.shared.tls.clone() }
        }
        Listener::Native | Listener::Metrics => {
            Security { listener: "NATIVE".into(), protocol: SecurityProtocol::Plaintext, tls: None }
        }
    };
    glommio::spawn_local(async move {
        let mut stop = stop_rx.fuse();
        loop {
            let accepted = futures::select! {
                accepted = listener.accept().fuse() => accepted,
                _ = stop => break,
            };
            match accepted {
                Ok(stream) if kind == Listener::Metrics => {
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        let tls = shard.shared.tls.clone().filter(|_| shard.shared.config.metrics_tls);
                        match tls {
                            None => crate::metrics_http::serve_http(shard, stream).await,
                            Some(tls) => match crate::wire::conn::tls_handshake(&tls, stream).await {
                                Ok(stream) => crate::metrics_http::serve_http(shard, stream).await,
                                Err(err) => {
                                    shard.metrics.tls_handshake_failed();
                                    tracing::info!(
                                        shard = shard.id,
                                        "TLS handshake on the metrics listener failed: {err}"
                                    );
                                }
                            },
                        }
                    })
                    .detach();
                }
                Ok(stream) if shard.metrics.connections_open() >= shard.shared.config.connections_per_shard_max => {
                    // Over the limit: close at once (the client sees the
                    // close and may retry elsewhere or later).
                    tracing::warn!(
                        shard = shard.id,
                        limit = shard.shared.config.connections_per_shard_max,
                        "refusing a connection: too many open"
                    );
                    drop(stream);
                    continue;
                }
                Ok(stream) => {
                    // Past the broker's connection creation rate this loop
                    // waits (it accepts nothing meanwhile), as Kafka's
                    // acceptor does.
                    let wait = shard.shared.connection_limits.creation_delay(std::time::Instant::now());
                    if !wait.is_zero() {
                        shard.metrics.accept_throttled(wait);
                        glommio::timer::sleep(wait).await;
                    }
                    let Some(slot) = admit(&shard, &stream) else { continue };
                    let security = security.clone();
                    if matches!(kind, Listener::Kafka(_)) {
                        serve_in_slot(crate::kafka::Kafka(shard.clone()), stream, security, slot)
                    } else {
                        serve_in_slot(crate::native::Native(shard.clone()), stream, security, slot)
                    }
                }
                Err(err) => {
                    // EMFILE and friends: log, back off briefly, go on.
                    tracing::warn!(shard = shard.id, "accept failed: {err}");
                    glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
        }
    })
    .detach();
}

/// Serves a client connection in a task that holds its address's slot
/// until the connection ends.
fn serve_in_slot<F: crate::wire::FrontEnd + 'static>(
    front: F,
    stream: TcpStream,
    security: Security,
    slot: crate::wire::connection_limits::Slot,
) {
    glommio::spawn_local(async move {
        serve_tcp(front, stream, security).await;
        drop(slot);
    })
    .detach();
}

/// The connection's place in its address's count
/// (`max_connections_per_ip`), or None: over the limit, it is closed here.
fn admit(shard: &Shard, stream: &TcpStream) -> Option<crate::wire::connection_limits::Slot> {
    // A connection whose peer is already gone has no address to count.
    let ip = crate::wire::connection_limits::canonical(stream.peer_addr().ok()?.ip());
    // KIP-612's ip quota: over its connection_creation_rate, closed.
    let limits = &shard.shared.connection_limits;
    if let Some(rate) = shard.shared.catalog.load().client_quotas.connection_creation_rate(ip)
        && !limits.within_ip_creation_rate(ip, rate, std::time::Instant::now())
    {
        shard.metrics.connection_refused_ip_rate();
        tracing::warn!(shard = shard.id, %ip, rate, "refusing a connection: its address is over its connection_creation_rate quota");
        return None;
    }
    let slot = limits.admit(ip);
    if slot.is_none() {
        shard.metrics.connection_refused_per_ip();
        tracing::warn!(
            shard = shard.id,
            %ip,
            limit = limits.limit_of(ip),
            "refusing a connection: its address has max.connections.per.ip open"
        );
    }
    slot
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proc_net_tcp_addresses_parse() {
        assert_eq!(proc_net_address("0100007F:2384"), Some("127.0.0.1:9092".parse().unwrap()));
        assert_eq!(proc_net_address("00000000:2384"), Some("0.0.0.0:9092".parse().unwrap()));
        assert_eq!(proc_net_address("00000000000000000000000001000000:2384"), Some("[::1]:9092".parse().unwrap()));
        assert_eq!(proc_net_address("zz:1"), None);
    }

    #[test]
    fn creating_the_topics_directory_syncs_the_parent_of_each_directory_created() {
        // Under target/ (a real disk), as the other tests' data.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/net-unit/create-dir-durable");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let topics = root.join("data").join("topics");
        assert_eq!(create_dir_durable(&topics).unwrap(), vec![root.join("data"), topics.clone()]);
        assert!(topics.is_dir());
        // An existing directory: nothing created, nothing to sync.
        assert!(create_dir_durable(&topics).unwrap().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
