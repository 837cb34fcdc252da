//! `Client`: the connection pool, the metadata cache and request routing
//! that the admin, producer and consumer share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate_flatbuf::Frame;

use crate::config::ClientConfig;
use crate::conn::Connection;
use crate::error::ClientError;
use crate::limits::{ANY_BROKER_ATTEMPT_MS_MIN, METADATA_REFRESH_BACKOFF_MS};
use crate::lock;
use crate::metadata::{ClusterMetadata, PartitionRoute, TopicPartition};
use crate::protocol::{self, ListedOffset, OutFrame, Stamp};

/// The pause before a retry that needs fresh metadata.
fn backoff() -> Duration {
    Duration::from_millis(METADATA_REFRESH_BACKOFF_MS)
}

/// A handle on a cluster. Cheap to clone: clones share connections and
/// metadata.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("bootstrap", &self.inner.config.bootstrap).finish_non_exhaustive()
    }
}

/// One pooled connection; the async mutex makes concurrent requests to a
/// new address wait for one connect instead of each opening their own.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

struct Inner {
    config: ClientConfig,
    pool: Mutex<HashMap<String, Slot>>,
    metadata: Mutex<MetadataCache>,
    /// Held while a metadata request is out, so that callers who all find
    /// the cache stale send one request, not one each.
    refreshing: tokio::sync::Mutex<()>,
    /// Addresses whose last connect failed, and when: requests any broker
    /// can answer try them last, so a dead broker costs one attempt.
    unreachable: Mutex<HashMap<String, Instant>>,
}

#[derive(Default)]
struct MetadataCache {
    current: Option<Arc<ClusterMetadata>>,
    fetched_at: Option<Instant>,
    /// Set when an error suggests the metadata is wrong.
    stale: bool,
}

impl Client {
    /// Checks the configuration and fetches the cluster's metadata from the
    /// first bootstrap broker that answers (those that refuse or do not
    /// answer are skipped, all within the request timeout).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let client = Client {
            inner: Arc::new(Inner {
                config,
                pool: Mutex::new(HashMap::new()),
                metadata: Mutex::new(MetadataCache::default()),
                refreshing: tokio::sync::Mutex::new(()),
                unreachable: Mutex::new(HashMap::new()),
            }),
        };
        client.refresh_metadata().await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.request_timeout_ms)
    }

    /// Asks a broker for metadata about `topics` (every topic when `None`).
    pub async fn metadata(&self, topics: Option<&[String]>) -> Result<ClusterMetadata, ClientError> {
        let frame = self.request_any(|stamp| protocol::metadata(stamp, topics)).await?;
        let metadata = protocol::decode_metadata(&frame)?;
        if topics.is_none() {
            let mut cache = lock(&self.inner.metadata);
            cache.current = Some(Arc::new(metadata.clone()));
            cache.fetched_at = Some(Instant::now());
            cache.stale = false;
        }
        Ok(metadata)
    }

    /// The cached metadata, refreshed first if it is missing, too old or
    /// marked stale.
    pub(crate) async fn cluster(&self) -> Result<Arc<ClusterMetadata>, ClientError> {
        match self.cached_metadata() {
            Some(metadata) => Ok(metadata),
            None => self.refresh_metadata().await,
        }
    }

    /// The cached metadata unless it is missing, too old or marked stale.
    fn cached_metadata(&self) -> Option<Arc<ClusterMetadata>> {
        let cache = lock(&self.inner.metadata);
        let age = cache.fetched_at?.elapsed();
        let max_age = Duration::from_millis(self.inner.config.metadata_max_age_ms);
        let usable = age < max_age && !cache.stale;
        if usable { cache.current.clone() } else { None }
    }

    /// Fetches the metadata unless another caller just did. Metadata marked
    /// stale is not used again (a retry on it would go back to the broker
    /// that refused it); instead refreshes are spaced at least
    /// `METADATA_REFRESH_BACKOFF_MS` apart, waiting out the rest of that,
    /// and callers who find the cache stale together share one request.
    async fn refresh_metadata(&self) -> Result<Arc<ClusterMetadata>, ClientError> {
        let _refreshing = self.inner.refreshing.lock().await;
        if let Some(metadata) = self.cached_metadata() {
            return Ok(metadata);
        }
        let since_last = lock(&self.inner.metadata).fetched_at.map(|at| at.elapsed());
        if let Some(wait) = since_last.and_then(|age| backoff().checked_sub(age)) {
            tokio::time::sleep(wait).await;
        }
        Ok(Arc::new(self.metadata(None).await?))
    }

    /// Marks the cached metadata stale after an error that suggests it
    /// sent a request to the wrong place.
    pub(crate) fn invalidate_metadata(&self) {
        lock(&self.inner.metadata).stale = true;
    }

    /// The topic's partition count; a topic the cache does not know is
    /// looked up once more, since it may have been created since. A
    /// retriable error (the topic's metadata reports one, or no broker
    /// answered) is retried with fresh metadata within the request timeout.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<i32, ClientError> {
        let deadline = Instant::now() + self.request_timeout();
        // A topic just created may not have reached the broker asked yet
        // (each applies the controller's log on its own): it is looked up
        // again for a while before it counts as unknown, as a Kafka
        // producer waits for a topic's metadata (max.block.ms).
        let unknown_deadline =
            Instant::now() + self.request_timeout().min(Duration::from_millis(crate::limits::UNKNOWN_TOPIC_WAIT_MS));
        loop {
            let count = match self.cluster().await.and_then(|metadata| metadata.partition_count(topic)) {
                Err(ClientError::UnknownTopic(_)) => {
                    let _refreshing = self.inner.refreshing.lock().await;
                    match self.metadata(None).await.and_then(|metadata| metadata.partition_count(topic)) {
                        // Still unknown: asked by name, the broker says
                        // whether it is hidden from this principal (a
                        // listing leaves out what it may not describe).
                        Err(ClientError::UnknownTopic(_)) => self
                            .metadata(Some(&[topic.to_string()]))
                            .await
                            .and_then(|metadata| metadata.partition_count(topic)),
                        other => other,
                    }
                }
                other => other,
            };
            let unknown_for_now = |error: &ClientError| {
                matches!(error, ClientError::UnknownTopic(_)) && Instant::now() < unknown_deadline
            };
            match count {
                Err(error)
                    if (error.is_retriable() || unknown_for_now(&error)) && Instant::now() + backoff() < deadline =>
                {
                    tracing::debug!(topic, %error, "no usable metadata for the topic yet; retrying");
                    self.invalidate_metadata();
                    tokio::time::sleep(backoff()).await;
                }
                other => return other,
            }
        }
    }

    /// Where requests for `tp` go, from the cached metadata.
    pub(crate) async fn partition_address(&self, tp: &TopicPartition) -> Result<String, ClientError> {
        Ok(self.partition_route(tp).await?.address)
    }

    /// The leader's address for `tp` and its leader epoch, from the cached
    /// metadata. A partition without a leader is `LeaderNotAvailable` and
    /// marks the metadata stale, so the caller's retry sees a fresh copy.
    pub(crate) async fn partition_route(&self, tp: &TopicPartition) -> Result<PartitionRoute, ClientError> {
        let metadata = self.cluster().await?;
        let route = metadata.partition_route(&tp.topic, tp.partition, self.inner.config.shard_aware);
        if let Err(error) = &route {
            self.note_failure(error);
        }
        route
    }

    /// The pooled connection to `address`, opened (with its handshake,
    /// within `timeout`) if there is none or the last one failed.
    async fn connection(&self, address: &str, timeout: Duration) -> Result<Arc<Connection>, ClientError> {
        let slot = lock(&self.inner.pool).entry(address.to_string()).or_default().clone();
        let mut pooled = slot.lock().await;
        if let Some(connection) = pooled.as_ref()
            && connection.is_usable()
        {
            return Ok(connection.clone());
        }
        *pooled = None;
        let config = &self.inner.config;
        let connected = Connection::connect(
            address,
            &config.client_id,
            timeout,
            config.frame_bytes_max,
            (config.sasl.as_ref(), config.tls.as_ref()),
        )
        .await;
        let connection = match connected {
            Ok(connection) => connection,
            Err(error) => {
                lock(&self.inner.unreachable).insert(address.to_string(), Instant::now());
                return Err(error);
            }
        };
        lock(&self.inner.unreachable).remove(address);
        tracing::debug!(address = connection.address(), "connected");
        let connection = Arc::new(connection);
        *pooled = Some(connection.clone());
        Ok(connection)
    }

    /// `connection`, waiting at most `timeout` in all (also for another
    /// caller's connect to the same address).
    async fn connect_within(&self, address: &str, timeout: Duration) -> Result<Arc<Connection>, ClientError> {
        match tokio::time::timeout(timeout, self.connection(address, timeout)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(ClientError::Timeout),
        }
    }

    fn note_failure(&self, error: &ClientError) {
        if error.invalidates_metadata() {
            self.invalidate_metadata();
        }
    }

    /// Sends a request to `address` and waits up to `timeout` for its answer.
    pub(crate) async fn request(
        &self,
        address: &str,
        timeout: Duration,
        build: impl FnOnce(Stamp) -> OutFrame,
    ) -> Result<Frame, ClientError> {
        let result = match self.connect_within(address, timeout.min(self.request_timeout())).await {
            Ok(connection) => connection.request(timeout, build).await,
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            self.note_failure(error);
        }
        result
    }

    /// Sends a request that gets no answer (a produce with acks=0).
    pub(crate) async fn send_only(
        &self,
        address: &str,
        build: impl FnOnce(Stamp) -> OutFrame,
    ) -> Result<(), ClientError> {
        let result = match self.connection(address, self.request_timeout()).await {
            Ok(connection) => connection.send_only(self.request_timeout(), build).await,
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            self.note_failure(error);
        }
        result
    }

    /// Brokers to try for requests any broker can answer: the known ones
    /// first (fenced ones after the others), then the bootstrap list; any
    /// address whose last connect failed goes to the end.
    fn any_broker_addresses(&self) -> Vec<String> {
        let known = lock(&self.inner.metadata).current.clone();
        let mut addresses: Vec<String> = known.map(|metadata| metadata.broker_addresses()).unwrap_or_default();
        for address in &self.inner.config.bootstrap {
            if !addresses.contains(address) {
                addresses.push(address.clone());
            }
        }
        let unreachable = lock(&self.inner.unreachable);
        // A stable sort: the order above holds within each group, and the
        // unreachable are tried longest-failed first.
        addresses.sort_by_key(|address| unreachable.get(address).copied());
        addresses
    }

    /// Sends a request to the first broker that answers it; a retriable
    /// failure moves on to the next broker. All of it takes at most the
    /// request timeout: each attempt gets an equal share of what is left,
    /// so that a broker that does not answer at all (a dead host) leaves
    /// time for the others.
    pub(crate) async fn request_any(&self, build: impl Fn(Stamp) -> OutFrame) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + self.request_timeout();
        let addresses = self.any_broker_addresses();
        let mut last_error = None;
        for (index, address) in addresses.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let attempts_left = u32::try_from(addresses.len() - index).unwrap_or(u32::MAX);
            let timeout = (left / attempts_left).max(left.min(Duration::from_millis(ANY_BROKER_ATTEMPT_MS_MIN)));
            match self.request(address, timeout, &build).await {
                Ok(frame) => return Ok(frame),
                Err(error) if error.is_retriable() => {
                    tracing::debug!(%address, %error, "broker did not answer; trying the next");
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(ClientError::Timeout))
    }

    /// Sends an admin request to the controller if the metadata names one,
    /// else to any broker. A controller that cannot be reached (the request
    /// was not sent) is looked up again in fresh metadata, within the
    /// request timeout: the controller may have moved.
    pub(crate) async fn request_controller(&self, build: impl Fn(Stamp) -> OutFrame) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let metadata = self.cluster().await?;
            let Some(controller) = metadata.broker(metadata.controller_id) else {
                return self.request_any(build).await;
            };
            let address = crate::config::format_address(&controller.host, controller.port);
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let connection = match self.connect_within(&address, left).await {
                Ok(connection) => connection,
                Err(error) if error.is_retriable() && Instant::now() + backoff() < deadline => {
                    tracing::debug!(%address, %error, "controller unreachable; refreshing metadata");
                    self.invalidate_metadata();
                    tokio::time::sleep(backoff()).await;
                    continue;
                }
                Err(error) => {
                    self.note_failure(&error);
                    return Err(error);
                }
            };
            let result = connection.request(self.request_timeout(), &build).await;
            if let Err(error) = &result {
                self.note_failure(error);
            }
            return result;
        }
    }

    /// ListOffsets for each partition (timestamp -2 earliest, -1 latest, or
    /// ms), sent to each partition's leader; retriable failures are retried
    /// with fresh metadata until the request timeout.
    pub(crate) async fn list_offsets(
        &self,
        entries: &[(TopicPartition, i64)],
        read_committed: bool,
    ) -> Result<HashMap<TopicPartition, ListedOffset>, ClientError> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            match self.list_offsets_once(entries, read_committed).await {
                Err(error) if error.is_retriable() && Instant::now() < deadline => {
                    tracing::debug!(%error, "list offsets failed; retrying");
                    tokio::time::sleep(backoff()).await;
                }
                other => return other,
            }
        }
    }

    async fn list_offsets_once(
        &self,
        entries: &[(TopicPartition, i64)],
        read_committed: bool,
    ) -> Result<HashMap<TopicPartition, ListedOffset>, ClientError> {
        let mut by_address: HashMap<String, Vec<(TopicPartition, i64)>> = HashMap::new();
        for (tp, timestamp) in entries {
            let address = self.partition_address(tp).await?;
            by_address.entry(address).or_default().push((tp.clone(), *timestamp));
        }
        let requests = by_address.iter().map(|(address, entries)| async move {
            let frame = self
                .request(address, self.request_timeout(), |stamp| {
                    protocol::list_offsets(stamp, entries, read_committed)
                })
                .await?;
            protocol::decode_list_offsets(&frame)
        });
        let mut out = HashMap::new();
        for listed in futures::future::try_join_all(requests).await?.into_iter().flatten() {
            if let Some(code) = listed.error {
                let error = ClientError::Server { code, message: Some(format!("list offsets of {}", listed.tp)) };
                self.note_failure(&error);
                return Err(error);
            }
            out.insert(listed.tp.clone(), listed);
        }
        if let Some((missing, _)) = entries.iter().find(|(tp, _)| !out.contains_key(tp)) {
            return Err(ClientError::Protocol(format!("the broker did not list an offset for {missing}")));
        }
        Ok(out)
    }
}
