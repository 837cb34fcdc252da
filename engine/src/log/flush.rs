//! The flusher: group-commit cycles of one partition log, pipelined.
//!
//! A single task per log (`run_flusher`) plans a cycle from what appends
//! dispatched, copies it into aligned DMA buffers, writes it in chunks, and
//! acks it once durable under the log's policy. While one cycle writes, the
//! next is copied and its chunks go out; written cycles sync in tasks of
//! their own (up to `SYNCS_IN_FLIGHT_MAX`) and are acked strictly in order.
//! Two writes of one page are never in flight together: a cycle's continued
//! first page and partial last page go as single-page writes, and only the
//! continued page waits, for the previous cycle's write of it.

use super::*;

/// What one flush cycle does, decided under a borrow of the state.
struct CyclePlan<F> {
    segment_base: i64,
    log_path: PathBuf,
    file: Option<Rc<F>>,
    /// Pending entries this cycle writes: the `count` after those already
    /// submitted by an earlier cycle still in flight.
    count: usize,
    first_position: u64,
    end_position: u64,
    page_head: Vec<u8>,
    batches: Vec<Bytes>,
    last_offset: Option<i64>,
    sync: bool,
    seal: bool,
    epochs: Option<LeaderEpochCache>,
}

impl<F> CyclePlan<F> {
    fn is_idle(&self) -> bool {
        self.count == 0 && !self.seal && !self.sync && self.epochs.is_none()
    }
}

/// A cycle whose writes are on their way to the device.
struct Inflight<F> {
    plan: CyclePlan<F>,
    file: Rc<F>,
    writes: Writes,
}

/// A written cycle waiting for its fdatasync (if its plan syncs) before
/// it is acked.
struct Syncing<F> {
    plan: CyclePlan<F>,
    sync: Option<glommio::Task<std::io::Result<()>>>,
}

impl<F: StorageFile> Syncing<F> {
    /// Starts the cycle's fdatasync in a task of its own. The cycle's
    /// writes have completed, so the sync covers them whenever it runs.
    fn start(plan: CyclePlan<F>, file: Rc<F>) -> Self {
        let sync = plan.sync.then(|| glommio::spawn_local(async move { file.fdatasync().await }));
        Syncing { plan, sync }
    }
}

/// The chunk writes of one cycle, running in a task of their own.
struct Writes {
    task: glommio::Task<std::io::Result<()>>,
    /// Fires once the chunk holding the cycle's last page is written: the
    /// next cycle rewrites that page and must not race it.
    tail_written: Option<oneshot::Receiver<()>>,
}

impl<S: Storage> LogInner<S> {
    /// Whether the flusher has something to do now, and if not, how long
    /// until an interval sync falls due.
    fn flush_work(&self) -> (bool, Option<Duration>) {
        let state = self.state.borrow();
        let seal_due = state.segments.values().any(|segment| segment.roll_requested && !segment.sealed);
        let unsubmitted = state.pending.len() > state.submitted_count;
        if unsubmitted || seal_due || state.sync_requested || state.epochs_dirty {
            return (true, None);
        }
        let now_ms = self.config().clock.now_ms();
        let sync_due_ms = match self.config().durability {
            Durability::IntervalMs(interval_ms) if state.synced_offset < state.written_offset => {
                Some(state.last_sync_ms + interval_ms as i64 - now_ms)
            }
            _ => None,
        };
        // A burst that ends within the interval leaves the recovery point
        // behind; it is written once due, without waiting for more appends.
        let recovery_point_due_ms = state.recovery_point_due_in_ms(now_ms, false);
        match [sync_due_ms, recovery_point_due_ms].into_iter().flatten().min() {
            Some(due_ms) if due_ms <= 0 => (true, None),
            Some(due_ms) => (false, Some(Duration::from_millis(due_ms as u64))),
            None => (false, None),
        }
    }

    fn plan_cycle(&self) -> CyclePlan<S::File> {
        let state = self.state.borrow();
        // A segment waiting to be sealed comes first: nothing may reach the
        // next segment before the previous one is complete on disk.
        let target = state
            .segments
            .values()
            .find(|segment| segment.roll_requested && !segment.sealed)
            .unwrap_or_else(|| state.active());
        let segment_base = target.base_offset;
        let mut count = 0;
        let mut bytes_total = 0;
        let mut batches = Vec::new();
        let mut last_offset = None;
        let unsubmitted = state.pending.iter().skip(state.submitted_count);
        for pending in unsubmitted.take_while(|pending| pending.segment_base == segment_base) {
            if count > 0 && bytes_total + pending.bytes.len() > self.config().flush_cycle_bytes_max {
                break;
            }
            count += 1;
            bytes_total += pending.bytes.len();
            batches.push(pending.bytes.clone());
            last_offset = Some(pending.last_offset);
        }
        if let Some(first) = state.pending.get(state.submitted_count).filter(|_| count > 0) {
            assert_eq!(first.position, target.submitted_bytes, "pending batches start where submitted ones end");
        }
        let after = state.submitted_count + count;
        let drains_segment = state.pending.get(after).is_none_or(|next| next.segment_base != segment_base);
        let seal = target.roll_requested && drains_segment;
        let interval_due = match self.config().durability {
            Durability::Always => true,
            Durability::IntervalMs(interval_ms) => {
                self.config().clock.now_ms() - state.last_sync_ms >= interval_ms as i64
            }
            Durability::Never => false,
        };
        let unsynced = count > 0 || state.synced_offset < state.written_offset;
        let plan = CyclePlan {
            segment_base,
            log_path: target.log_path.clone(),
            file: target.file.clone(),
            count,
            first_position: target.submitted_bytes,
            end_position: target.submitted_bytes + bytes_total as u64,
            page_head: target.page_head.clone(),
            batches,
            last_offset,
            sync: seal || state.sync_requested || (interval_due && unsynced),
            seal,
            epochs: state.epochs_dirty.then(|| state.epochs.clone()),
        };
        drop(state);
        plan
    }

    /// Called when a plan is carried out (not merely planned: the flusher
    /// plans on every turn and drops plans while it waits). Under an
    /// interval policy the interval restarts when a sync is committed to,
    /// not when it is acked, so cycles planned while it runs do not sync
    /// again.
    fn commit_plan_sync(&self, plan: &CyclePlan<S::File>) {
        if plan.sync && matches!(self.config().durability, Durability::IntervalMs(_)) {
            self.state.borrow_mut().last_sync_ms = self.config().clock.now_ms();
        }
    }

    pub(super) async fn open_segment_file(&self, path: &Path) -> Result<Rc<S::File>> {
        let file = self.storage.open(path, true).await.map_err(|err| LogError::io("create", path, err))?;
        self.storage.sync_dir(&self.dir).await.map_err(|err| LogError::io("sync dir", &self.dir, err))?;
        Ok(Rc::new(file))
    }

    /// The segment file a plan writes to, created on first use.
    async fn file_for(&self, plan: &CyclePlan<S::File>) -> Result<Rc<S::File>> {
        if let Some(file) = &plan.file {
            return Ok(file.clone());
        }
        let file = self.open_segment_file(&plan.log_path).await?;
        if let Some(segment) = self.state.borrow_mut().segments.get_mut(&plan.segment_base) {
            segment.file = Some(file.clone());
        }
        Ok(file)
    }

    /// Runs flush cycles until nothing is due. While one cycle's writes are
    /// on the device, the next is copied into DMA buffers and its chunks go
    /// out at once; only its continued first page waits for the previous
    /// cycle's write of that page (two writes of one page are never in
    /// flight together). A cycle whose writes completed starts its fdatasync
    /// (if due) in a task of its own; up to `SYNCS_IN_FLIGHT_MAX` run at
    /// once, and cycles are acked strictly in order as their syncs finish.
    async fn flush_pipeline(&self) -> Result<()> {
        let mut inflight: Option<Inflight<S::File>> = None;
        // Written cycles whose fdatasync runs, oldest first; acked in order.
        let mut syncing: VecDeque<Syncing<S::File>> = VecDeque::new();
        loop {
            self.finish_synced(&mut syncing, SYNCS_IN_FLIGHT_MAX).await?;
            let plan = self.plan_cycle();
            let pipelined = plan.count > 0
                && !plan.seal
                && inflight.as_ref().is_none_or(|prev| prev.plan.segment_base == plan.segment_base);
            if plan.count == 0 && !plan.seal && (inflight.is_some() || !syncing.is_empty()) {
                // Nothing new yet: wait for the writes or syncs in flight or
                // for new appends, whichever comes first, so that appends
                // arriving now still join the pipeline.
                inflight = self.wait_for_progress(inflight, &mut syncing).await?;
                continue;
            }
            if !pipelined {
                // Rolls, seals and sync-only cycles run alone, after
                // everything in flight has completed.
                if let Some(prev) = inflight.take() {
                    self.await_writes(&prev.plan, prev.writes).await?;
                    syncing.push_back(Syncing::start(prev.plan, prev.file));
                    continue;
                }
                if !syncing.is_empty() {
                    self.finish_synced(&mut syncing, 0).await?;
                    continue;
                }
                if plan.is_idle() {
                    return self.write_recovery_point_if_due(false).await;
                }
                if plan.file.is_none() && plan.count == 0 && !plan.seal {
                    // Nothing was ever written to this segment: nothing to sync.
                    self.finish_cycle(plan, true);
                    continue;
                }
                let file = self.file_for(&plan).await?;
                if plan.count > 0 {
                    let writes = self.submit(&plan, &file).await?;
                    self.await_writes(&plan, writes).await?;
                }
                self.complete(plan, &file).await?;
                continue;
            }
            let file = self.file_for(&plan).await?;
            let writes = match inflight.take() {
                Some(mut prev) => {
                    let chunks = self.compose(&plan, &file).await?;
                    // Only a continued partial page overlaps the previous cycle.
                    let gate = prev.writes.tail_written.take().filter(|_| !plan.page_head.is_empty());
                    let writes = spawn_writes(file.clone(), plan.log_path.clone(), chunks, gate);
                    // Let the new writes reach the device before waiting.
                    glommio::executor().yield_task_queue_now().await;
                    // Ack what has synced meanwhile, without waiting.
                    self.finish_synced(&mut syncing, usize::MAX).await?;
                    self.await_writes(&prev.plan, prev.writes).await?;
                    // Its fdatasync runs while the next cycles write.
                    syncing.push_back(Syncing::start(prev.plan, prev.file));
                    self.finish_synced(&mut syncing, SYNCS_IN_FLIGHT_MAX).await?;
                    writes
                }
                None => self.submit(&plan, &file).await?,
            };
            inflight = Some(Inflight { plan, file, writes });
        }
    }

    /// Waits until the writes in flight complete (their cycle then starts
    /// syncing), the oldest sync completes (its cycle is then acked), or an
    /// append arrives. Returns what is still in flight.
    async fn wait_for_progress(
        &self,
        inflight: Option<Inflight<S::File>>,
        syncing: &mut VecDeque<Syncing<S::File>>,
    ) -> Result<Option<Inflight<S::File>>> {
        use futures::future::{Either, select};
        if let Some(prev) = inflight {
            let Inflight { plan, file, writes } = prev;
            let Writes { task, tail_written } = writes;
            return match select(task, self.wake.wait()).await {
                Either::Left((result, _)) => {
                    result.map_err(|err| LogError::io("write", &plan.log_path, err))?;
                    syncing.push_back(Syncing::start(plan, file));
                    Ok(None)
                }
                Either::Right(((), task)) => Ok(Some(Inflight { plan, file, writes: Writes { task, tail_written } })),
            };
        }
        if let Some(Syncing { sync: Some(task), .. }) = syncing.front_mut()
            && let Either::Left((result, _)) = select(&mut *task, self.wake.wait()).await
        {
            let front = syncing.pop_front().expect("the front sync exists");
            self.finish_sync(front, result).await?;
        }
        Ok(None)
    }

    /// Acks, in order, the syncing cycles whose fdatasync completed; waits
    /// for the oldest while more than `in_flight_max` are syncing.
    async fn finish_synced(&self, syncing: &mut VecDeque<Syncing<S::File>>, in_flight_max: usize) -> Result<()> {
        use futures::FutureExt;
        loop {
            let must_wait = syncing.len() > in_flight_max;
            let Some(front) = syncing.front_mut() else { return Ok(()) };
            let result = match front.sync.as_mut() {
                None => Ok(()),
                Some(task) if must_wait => task.await,
                Some(task) => match task.now_or_never() {
                    Some(result) => result,
                    None => return Ok(()),
                },
            };
            let front = syncing.pop_front().expect("the front sync exists");
            self.finish_sync(front, result).await?;
        }
    }

    async fn finish_sync(&self, entry: Syncing<S::File>, result: std::io::Result<()>) -> Result<()> {
        result.map_err(|err| LogError::io("fdatasync", &entry.plan.log_path, err))?;
        debug_assert!(!entry.plan.seal, "seals run outside the pipeline");
        self.write_epoch_checkpoint(entry.plan.epochs.as_ref()).await?;
        let synced = entry.plan.sync;
        self.finish_cycle(entry.plan, synced);
        self.write_recovery_point_if_due(false).await
    }

    /// Copies a plan into DMA buffers and starts writing them.
    async fn submit(&self, plan: &CyclePlan<S::File>, file: &Rc<S::File>) -> Result<Writes> {
        let chunks = self.compose(plan, file).await?;
        let writes = spawn_writes(file.clone(), plan.log_path.clone(), chunks, None);
        glommio::executor().yield_task_queue_now().await;
        Ok(writes)
    }

    async fn await_writes(&self, plan: &CyclePlan<S::File>, writes: Writes) -> Result<()> {
        writes.task.await.map_err(|err| LogError::io("write", &plan.log_path, err))
    }

    /// Reserves disk blocks, copies the plan's batches (after the partial
    /// page they continue) into aligned chunks, and records them as
    /// submitted.
    async fn compose(
        &self,
        plan: &CyclePlan<S::File>,
        file: &Rc<S::File>,
    ) -> Result<Vec<(<S::File as StorageFile>::Buf, u64)>> {
        // Every write of batches passes here: a replicated batch after a
        // gap reaches the disk only once the checkpoint allows the gap.
        self.cover_replicated_gaps().await?;
        let wanted = align_up(plan.end_position);
        let preallocated_bytes =
            self.state.borrow().segments.get(&plan.segment_base).map_or(0, |s| s.preallocated_bytes);
        if wanted > preallocated_bytes {
            let target = (wanted + self.config().preallocate_bytes).min(self.config().segment_bytes_max.max(wanted));
            file.pre_allocate(target).await.map_err(|err| LogError::io("fallocate", &plan.log_path, err))?;
            if let Some(segment) = self.state.borrow_mut().segments.get_mut(&plan.segment_base) {
                segment.preallocated_bytes = segment.preallocated_bytes.max(target);
            }
        }
        self.commit_plan_sync(plan);
        let (chunks, page_head) = compose_chunks(&**file, plan.first_position, &plan.page_head, &plan.batches);
        let mut state = self.state.borrow_mut();
        state.submitted_count += plan.count;
        let segment = state.segments.get_mut(&plan.segment_base).expect("planned segment exists");
        assert_eq!(segment.submitted_bytes, plan.first_position, "cycles are submitted in order");
        segment.submitted_bytes = plan.end_position;
        segment.page_head = page_head;
        assert!(segment.submitted_bytes <= segment.dispatched_bytes, "submitted more than was dispatched");
        Ok(chunks)
    }

    /// Finishes a cycle whose writes completed: fdatasync, seal and
    /// checkpoint as planned, then publish.
    async fn complete(&self, plan: CyclePlan<S::File>, file: &S::File) -> Result<()> {
        self.commit_plan_sync(&plan);
        if plan.sync {
            file.fdatasync().await.map_err(|err| LogError::io("fdatasync", &plan.log_path, err))?;
        }
        // The checkpoint goes before the seal: once a segment is sealed,
        // recovery scans it only from its last index entry, so an epoch
        // starting in it must already be in the checkpoint.
        self.write_epoch_checkpoint(plan.epochs.as_ref()).await?;
        if plan.seal {
            self.persist_segment(file, plan.segment_base, plan.end_position).await?;
            self.write_pending_snapshot().await?;
            // Only now: a recovery takes the entries below the snapshot
            // from the file, which is complete.
            self.evict_sealed_txns(plan.segment_base);
        }
        let (synced, seal) = (plan.sync, plan.seal);
        self.finish_cycle(plan, synced);
        self.write_recovery_point_if_due(seal).await
    }

    /// Publishes a completed cycle: moves offsets, unpins cached batches and
    /// acknowledges every waiter the new ack point covers.
    fn finish_cycle(&self, plan: CyclePlan<S::File>, synced: bool) {
        let mut state = self.state.borrow_mut();
        let now_ms = self.config().clock.now_ms();
        {
            let segment = state.segments.get_mut(&plan.segment_base).expect("planned segment exists");
            segment.written_bytes = plan.end_position;
            assert!(segment.written_bytes <= segment.submitted_bytes, "wrote more than was submitted");
            if plan.seal {
                segment.sealed = true;
                segment.roll_requested = false;
            }
        }
        let drained: usize = state.pending.drain(..plan.count).map(|pending| pending.bytes.len()).sum();
        state.pending_bytes -= drained;
        state.submitted_count -= plan.count;
        if let Some(last_offset) = plan.last_offset {
            state.written_offset = last_offset + 1;
            self.cache.unpin_through(self.log_id, last_offset);
        }
        if synced {
            state.synced_offset = state.written_offset;
            state.last_sync_ms = now_ms;
            state.sync_requested = false;
        }
        // An epoch assigned while this cycle ran still needs its checkpoint.
        if plan.epochs.as_ref() == Some(&state.epochs) {
            state.epochs_dirty = false;
        }
        let ack_offset = match self.config().durability {
            Durability::Always => state.synced_offset,
            Durability::IntervalMs(_) | Durability::Never => state.written_offset,
        };
        if self.config().high_watermark_follows_acks {
            state.raise_high_watermark(ack_offset);
        }
        // Waiters are in offset order except explicit flushes, which may ask
        // for a sync the ack point alone does not imply: check each.
        let synced_offset = state.synced_offset;
        let waiters = std::mem::take(&mut state.waiters);
        for waiter in waiters {
            let reached = if waiter.needs_sync { synced_offset } else { ack_offset };
            if waiter.offset_end <= reached {
                let _ = waiter.done.send(Ok(()));
            } else {
                if waiter.needs_sync {
                    state.sync_requested = true;
                }
                state.waiters.push_back(waiter);
            }
        }
        state.check_offsets();
    }
}

/// Lays `batches` out for writing at `position`, after the partial page
/// `page_head` they continue, in aligned chunks. Returns the chunks with
/// their file positions and the new partial last page.
#[allow(clippy::type_complexity)]
fn compose_chunks<F: StorageFile>(
    file: &F,
    position: u64,
    page_head: &[u8],
    batches: &[Bytes],
) -> (Vec<(F::Buf, u64)>, Vec<u8>) {
    let start = align_down(position);
    assert_eq!(start + page_head.len() as u64, position, "page head ends at the write position");
    let payload_bytes: usize = batches.iter().map(Bytes::len).sum();
    let end = position + payload_bytes as u64;
    let write_bytes = align_up(end - start) as usize;
    let sources = std::iter::once(page_head).chain(batches.iter().map(|bytes| &bytes[..]));
    let mut gather = Gather::new(sources);
    let mut chunks = Vec::with_capacity(write_bytes.div_ceil(WRITE_CHUNK_BYTES));
    let page_bytes = IO_ALIGN_BYTES as usize;
    let tail_page_start = (align_down(end) - start) as usize;
    let mut chunk_start = 0;
    while chunk_start < write_bytes {
        // The page continued from the previous cycle and the partial page
        // the next cycle will continue are written on their own, so that
        // the only write that must wait for another (a continued page for
        // its previous write) is one small page, issued early.
        let continued = chunk_start == 0 && !page_head.is_empty();
        let partial_tail = !end.is_multiple_of(IO_ALIGN_BYTES) && chunk_start == tail_page_start;
        let chunk_bytes = if continued || partial_tail {
            page_bytes
        } else if !end.is_multiple_of(IO_ALIGN_BYTES) && chunk_start < tail_page_start {
            // Stop short of the partial tail page.
            WRITE_CHUNK_BYTES.min(tail_page_start - chunk_start)
        } else {
            WRITE_CHUNK_BYTES.min(write_bytes - chunk_start)
        };
        let mut buf = file.alloc_buf(chunk_bytes);
        gather.fill(buf.as_mut_bytes());
        chunks.push((buf, start + chunk_start as u64));
        chunk_start += chunk_bytes;
    }
    // The new partial page is the tail of the last chunk.
    let tail_len = (end - align_down(end)) as usize;
    let new_page_head = match chunks.last() {
        Some((buf, chunk_position)) if tail_len > 0 => {
            let from = (align_down(end) - chunk_position) as usize;
            buf.as_bytes()[from..from + tail_len].to_vec()
        }
        _ => Vec::new(),
    };
    (chunks, new_page_head)
}

/// Writes the chunks, several in flight, in a task of their own so they
/// proceed while the flusher prepares the next cycle. The chunk at the
/// lowest position waits for `gate`: it is then the single page continued
/// from the previous cycle, which that cycle's last chunk (also a single
/// page) wrote. The other chunks go at once, so the device sees the next
/// cycle while the previous one drains.
fn spawn_writes<F: StorageFile>(
    file: Rc<F>,
    path: PathBuf,
    chunks: Vec<(F::Buf, u64)>,
    gate: Option<oneshot::Receiver<()>>,
) -> Writes {
    let (tail_tx, tail_rx) = oneshot::channel();
    let first_position = chunks.iter().map(|chunk| chunk.1).min();
    let last_position = chunks.iter().map(|chunk| chunk.1).max();
    // Single pages first: the next cycle's continued page waits for this
    // cycle's last page, and should not queue behind megabytes.
    let mut chunks = chunks;
    chunks.sort_by_key(|(buf, _)| buf.as_bytes().len() > IO_ALIGN_BYTES as usize);
    let task = glommio::spawn_local(async move {
        let mut gate = gate;
        let mut tail_tx = Some(tail_tx);
        let writes = chunks.into_iter().map(|(buf, chunk_position)| {
            let file = file.clone();
            let gate = if Some(chunk_position) == first_position { gate.take() } else { None };
            let tail_tx = if Some(chunk_position) == last_position { tail_tx.take() } else { None };
            async move {
                if let Some(gate) = gate {
                    gate.await.map_err(|_| std::io::Error::other("the previous cycle's write failed"))?;
                }
                file.write_at(buf, chunk_position).await?;
                if let Some(tail_tx) = tail_tx {
                    let _ = tail_tx.send(());
                }
                Ok::<(), std::io::Error>(())
            }
        });
        let result = futures::stream::iter(writes)
            .buffer_unordered(WRITES_IN_FLIGHT_MAX)
            .try_for_each(|()| std::future::ready(Ok(())))
            .await;
        if let Err(err) = &result {
            tracing::error!(path = %path.display(), error = %err, "segment write failed");
        }
        result
    });
    Writes { task, tail_written: Some(tail_rx) }
}

/// Copies a sequence of byte slices into consecutive buffers and zeroes
/// what is left of the last one.
struct Gather<'a, I: Iterator<Item = &'a [u8]>> {
    sources: I,
    current: &'a [u8],
}

impl<'a, I: Iterator<Item = &'a [u8]>> Gather<'a, I> {
    fn new(sources: I) -> Self {
        Gather { sources, current: &[] }
    }

    fn fill(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() {
            if self.current.is_empty() {
                match self.sources.next() {
                    Some(next) => self.current = next,
                    None => {
                        // Padding after the data: never leak old buffer bytes.
                        out.fill(0);
                        return;
                    }
                }
                continue;
            }
            let take = self.current.len().min(out.len());
            out[..take].copy_from_slice(&self.current[..take]);
            self.current = &self.current[take..];
            out = &mut out[take..];
        }
    }
}

pub(super) async fn run_flusher<S: Storage>(weak: Weak<LogInner<S>>, wake: Rc<Notify>, done: oneshot::Sender<()>) {
    loop {
        let Some(inner) = weak.upgrade() else { break };
        let (work_now, sync_due_in) = inner.flush_work();
        if !work_now {
            if inner.state.borrow().closed {
                break;
            }
            drop(inner);
            match sync_due_in {
                Some(due_in) => {
                    let sleep = Box::pin(glommio::timer::sleep(due_in));
                    futures::future::select(wake.wait(), sleep).await;
                }
                None => wake.wait().await,
            }
            continue;
        }
        let Ok(permit) = inner.io_lock.acquire_permit(1).await else { break };
        let result = inner.flush_pipeline().await;
        drop(permit);
        if let Err(err) = result {
            inner.fail(err);
            break;
        }
        drop(inner);
        glommio::yield_if_needed().await;
    }
    let _ = done.send(());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::io::{SimStorage, Storage};

    /// Lays out `batches` after `page_head` and returns (position, length)
    /// per chunk and the bytes the chunks hold, in file order.
    fn layout(position: u64, page_head: &[u8], batches: &[Bytes]) -> (Vec<(u64, usize)>, Vec<u8>, Vec<u8>) {
        glommio::LocalExecutor::default().run(async {
            let file = SimStorage::new().open(Path::new("/x.log"), true).await.unwrap();
            let (mut chunks, new_head) = compose_chunks(&file, position, page_head, batches);
            chunks.sort_by_key(|chunk| chunk.1);
            let shape = chunks.iter().map(|(buf, pos)| (*pos, buf.as_bytes().len())).collect();
            let bytes = chunks.iter().flat_map(|(buf, _)| buf.as_bytes().to_vec()).collect();
            (shape, bytes, new_head)
        })
    }

    #[test]
    fn a_continued_page_and_a_partial_tail_page_are_written_on_their_own() {
        let page = IO_ALIGN_BYTES as usize;
        let head = vec![1u8; 100];
        let batch = Bytes::from(vec![2u8; 3 * WRITE_CHUNK_BYTES]);
        let position = 5 * IO_ALIGN_BYTES + 100;
        let (shape, bytes, new_head) = layout(position, &head, std::slice::from_ref(&batch));
        let end = position as usize + batch.len();
        assert_eq!(shape.first(), Some(&(5 * IO_ALIGN_BYTES, page)), "the continued page alone");
        assert_eq!(shape.last(), Some(&(align_down(end as u64), page)), "the partial tail page alone");
        for pair in shape.windows(2) {
            assert_eq!(pair[0].0 + pair[0].1 as u64, pair[1].0, "chunks are contiguous");
        }
        assert!(shape.iter().all(|(_, len)| *len <= WRITE_CHUNK_BYTES));
        // Content: head, batch, zero padding.
        assert_eq!(&bytes[..100], &head[..]);
        assert!(bytes[100..100 + batch.len()].iter().all(|b| *b == 2));
        assert!(bytes[100 + batch.len()..].iter().all(|b| *b == 0), "padding is zeroed");
        assert_eq!(new_head.len(), end % page);
    }

    #[test]
    fn an_aligned_start_and_end_need_no_single_pages() {
        let batch = Bytes::from(vec![3u8; 2 * WRITE_CHUNK_BYTES]);
        let (shape, _, new_head) = layout(0, &[], std::slice::from_ref(&batch));
        assert_eq!(shape, vec![(0, WRITE_CHUNK_BYTES), (WRITE_CHUNK_BYTES as u64, WRITE_CHUNK_BYTES)]);
        assert!(new_head.is_empty());
    }
}
