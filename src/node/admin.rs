//! Administration: TLS and policy reloads, the audit trail (checkpoints, verify, export) and
//! housekeeping (retention).

use super::*;

/// How often the space of segment files nothing refers to is given back.
pub const RECLAIM_EVERY: Duration = Duration::from_secs(2);

/// How often the expiry watch looks ([`Node::expiry_loop`]).
const EXPIRY_WATCH_EVERY: Duration = Duration::from_secs(3600);

/// How often segment files are looked at for compaction ([`Node::compact_loop`]).
pub const COMPACT_EVERY: Duration = Duration::from_secs(600);

/// Bytes of records a compaction round moves at most.
pub const COMPACT_BUDGET: u64 = 256 * 1024 * 1024;

/// Records deleted per commit by retention: a commit stays small (one flush, a bounded undo
/// log) however much has piled up.
pub const PURGE_BATCH: usize = 1024;

impl Node {
    /// Puts new TLS material in force — typically a new CRL after a partner was revoked, or a
    /// renewed certificate: new handshakes use it at once, and every live connection is closed
    /// and made again under it, so a revoked partner is cut off now rather than at its next
    /// reconnect. Copies in flight are sent again (the receiver dedups). Recorded in the audit
    /// trail.
    pub async fn reload_tls(&self, tls: TlsMaterial, by: &str, detail: String) -> Result<(), NodeError> {
        let held = self.admin_lock().await;
        self.reload_tls_locked(&held, tls, by, detail).await
    }

    /// [`Node::reload_tls`] under the admin lock the caller holds.
    pub async fn reload_tls_locked(
        &self,
        _held: &super::AdminLock<'_>,
        tls: TlsMaterial,
        by: &str,
        detail: String,
    ) -> Result<(), NodeError> {
        let enrolled: Vec<NodeId> = self.partner_states().iter().map(|p| p.node).collect();
        let server = transport::server_config(&tls, &enrolled, refusals_logged(), self.inner.transport)?;
        let client = transport::client_config(&tls, self.inner.transport)?;
        let event = AuditEvent::Admin { action: crate::audit::AdminAction::TlsReload, by: by.into(), detail };
        self.inner.store.commit(vec![Op::Audit(event)]).await?;
        self.inner.endpoint.set_server_config(Some(server));
        *self.inner.client.write().unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        *self.inner.expiries.write().unwrap_or_else(std::sync::PoisonError::into_inner) = tls.expiries();
        let renewed = self.inner.tls.read().unwrap_or_else(std::sync::PoisonError::into_inner).certificate_der()
            != tls.certificate_der();
        *self.inner.tls.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tls);
        if renewed {
            // Partners are told of the renewed certificate (their `peers show` and log).
            let node = self.clone();
            self.spawn(async move { node.announce_keys().await });
        }
        self.inner.tls_generation.send_modify(|g| *g += 1);
        for p in self.partner_states() {
            p.wake.notify_one();
        }
        info!("TLS material reloaded; live connections are made again");
        Ok(())
    }

    /// Signs a checkpoint of the audit trail's head, unless the head is already signed; returns
    /// the head signed.
    pub async fn checkpoint(&self) -> Result<AuditHead, NodeError> {
        let head = self.inner.store.audit_head()?;
        if head.seq == 0 || self.inner.store.get(Tree::AuditCheckpoints, &crate::audit::key(head.seq))?.is_some() {
            return Ok(head);
        }
        let at = now_ms();
        let signature = self.seal().sign_detached(&Checkpoint::message(&self.inner.me, &head, at));
        let c = Checkpoint { node: self.inner.me, head, at, signature };
        self.inner.store.commit(vec![store::put(Tree::AuditCheckpoints, crate::audit::key(head.seq), &c)]).await?;
        debug!(seq = head.seq, "audit checkpoint signed");
        Ok(head)
    }

    /// Records an administrative action in the audit trail.
    pub async fn audit_admin(
        &self,
        action: crate::audit::AdminAction,
        by: &str,
        detail: String,
    ) -> Result<(), NodeError> {
        let event = AuditEvent::Admin { action, by: by.into(), detail };
        self.inner.store.commit(vec![Op::Audit(event)]).await?;
        Ok(())
    }

    /// Verifies the whole audit trail: every link, the recorded head, every checkpoint.
    pub fn audit_verify(&self) -> Result<Result<crate::audit::Verified, crate::audit::Broken>, NodeError> {
        // Every generation this node has held: its own, and those in the keyring (the public
        // file of one whose secret files are gone verifies what it signed).
        let seal = self.seal();
        let mut keys: Vec<_> = seal.generations().iter().map(|k| k.public().signing).collect();
        keys.extend(seal.keyring().generations(&self.inner.me).iter().map(|k| k.signing));
        Ok(self.inner.store.audit_verify(&self.inner.me, &keys)?)
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>, NodeError> {
        Ok(self.inner.store.audit_checkpoints()?)
    }

    /// The entries recorded between `from` and `to` (ms), extended to the next signed
    /// checkpoint (signed now if needed), as a self-contained export.
    pub async fn audit_export(&self, from: Millis, to: Millis) -> Result<crate::audit::Export, NodeError> {
        // Entries appended after this checkpoint (the node keeps working) are left for the next
        // export: an export ends at a signature.
        let signed = self.checkpoint().await?;
        self.slow(move |node| node.export_until(signed, from, to)).await?
    }

    /// The entries recorded between `from` and `to` (ms), decoded, oldest first, at most
    /// `limit`, and whether more are in the range (`liaison audit show`). A read: nothing is
    /// recorded, no checkpoint signed (an export is what takes entries off the node).
    pub async fn audit_entries(
        &self,
        from: Millis,
        to: Millis,
        limit: usize,
    ) -> Result<(Vec<crate::audit::Entry>, bool), NodeError> {
        self.slow(move |node| {
            let mut out = Vec::new();
            for (_, bytes) in node.inner.store.scan(Tree::Audit, &[])? {
                let e: crate::audit::Entry = store::decode(Tree::Audit, &bytes)?;
                if e.at < from || e.at > to {
                    continue;
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(e);
            }
            Ok((out, false))
        })
        .await?
    }

    /// The export of the entries between `from` and `to`, ending at the signed head `signed`
    /// (reads the whole trail: on the blocking pool).
    fn export_until(&self, signed: AuditHead, from: Millis, to: Millis) -> Result<crate::audit::Export, NodeError> {
        let checkpoints = self.checkpoints()?;
        let mut all = Vec::new();
        for (_, bytes) in self.inner.store.scan(Tree::Audit, &[])? {
            let e: crate::audit::Entry = store::decode(Tree::Audit, &bytes)?;
            if e.seq > signed.seq {
                break;
            }
            all.push((e.seq, e.at, bytes));
        }
        let first = all.iter().position(|(_, at, _)| *at >= from);
        let last = all.iter().rposition(|(_, at, _)| *at <= to);
        let (start, entries) = match (first, last) {
            (Some(first), Some(last)) if first <= last => {
                let start = match first.checked_sub(1).and_then(|i| all.get(i)) {
                    Some((seq, _, bytes)) => AuditHead { seq: *seq, hash: Digest::of(bytes) },
                    None => AuditHead::GENESIS,
                };
                // Extend to the first signed entry at or after the last one in range, so the
                // export ends at a signature (the head was just signed, so there is one).
                let end = (last..all.len())
                    .find(|i| checkpoints.iter().any(|c| c.head.seq == all[*i].0))
                    .unwrap_or(all.len() - 1);
                let entries = all[first..=end]
                    .iter()
                    .map(|(seq, _, bytes)| (*seq, crate::encoding::Blob(bytes.clone())))
                    .collect::<Vec<_>>();
                (start, entries)
            }
            _ => (self.inner.store.audit_head()?, Vec::new()),
        };
        let (first, last) = (start.seq, entries.last().map_or(start.seq, |(s, _)| *s));
        let seal = self.seal();
        let public_key = crate::encoding::hex(seal.public().signing.as_bytes());
        let public_keys =
            seal.generations().iter().map(|k| crate::encoding::hex(k.public().signing.as_bytes())).collect();
        Ok(crate::audit::Export {
            format: crate::audit::EXPORT_FORMAT.into(),
            node: self.inner.me,
            public_key,
            public_keys,
            start,
            entries,
            checkpoints: checkpoints.into_iter().filter(|c| c.head.seq > first && c.head.seq <= last).collect(),
        })
    }

    /// Housekeeping: signs an audit checkpoint every 30 s while the trail grows, and deletes
    /// received packets past their policy's retention at start and every 10 minutes.
    pub(super) async fn maintenance_loop(self) {
        let cancel = self.inner.cancel.clone();
        let mut rounds = 0u64;
        loop {
            if rounds % 20 == 0 {
                if let Err(e) = self.purge_expired(now_ms()).await {
                    warn!(error = %e, "could not apply the retention rules");
                }
            }
            rounds += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                _ = cancel.cancelled() => return,
            }
            if let Err(e) = self.checkpoint().await {
                warn!(error = %e, "could not sign an audit checkpoint");
            }
            crate::limits::flush_refusals();
            for p in self.partner_states() {
                let peer = p.node;
                for (kind, n) in p.budget.unlogged(now_ms()) {
                    warn!(%peer, kind, count = n, "{n} more events of this kind about the partner's traffic in the last minute, not logged one by one (the audit trail has each packet)");
                }
            }
        }
    }

    /// Applies the retention rules at `now`: what this node received ([`Node::purge_received`]),
    /// what it sent ([`Node::purge_sent`]) and the receipts it issued
    /// ([`Node::purge_issued`]), each past the `retention_days` of the policy with the partner
    /// concerned. A partner without a policy: kept (nothing says how long). The audit trail is
    /// not pruned: it is the record of every exchange, and names what was deleted. Returns how
    /// many records went.
    pub async fn purge_expired(&self, now: Millis) -> Result<usize, NodeError> {
        let received = self.purge_received(now).await?;
        let sent = self.purge_sent(now).await?;
        let issued = self.purge_issued(now).await?;
        let records = self.purge_submissions(now).await?;
        Ok(received + sent + issued + records)
    }

    /// Deletes the sent listing's records ([`Tree::Submissions`]) of packets with no copy left
    /// that are older than the longest retention of the policies with their recipients: those
    /// whose copies retention deleted, and those refused for every recipient (no copy ever).
    /// A record naming a recipient without a policy is kept. Returns how many went.
    pub async fn purge_submissions(&self, now: Millis) -> Result<usize, NodeError> {
        let book = self.policies();
        let mut gone = Vec::new();
        for (k, v) in self.inner.store.scan(Tree::Submissions, &[])? {
            let Ok(r) = store::decode::<crate::catalogue::SentRecord>(Tree::Submissions, &v) else { continue };
            let keeps: Option<Vec<Millis>> = r.decisions.iter().map(|d| self.retention_of(&book, &d.to)).collect();
            let Some(keep) = keeps.and_then(|k| k.into_iter().max()) else { continue };
            if r.at.saturating_add(keep) >= now || !self.inner.store.outbox_entries_of(r.id)?.is_empty() {
                continue;
            }
            gone.push((k, r.id));
        }
        for chunk in gone.chunks(PURGE_BATCH) {
            let mut ops: Vec<Op> = chunk.iter().map(|(k, _)| Op::Delete(Tree::Submissions, k.clone())).collect();
            let list = chunk.iter().map(|(_, id)| id.to_string()).collect::<Vec<_>>().join(", ");
            ops.push(Op::Audit(AuditEvent::Admin {
                action: crate::audit::AdminAction::RetentionPurge,
                by: "node".into(),
                detail: format!("deleted {} sent listing record(s) past retention: {list}", chunk.len()),
            }));
            self.inner.store.commit(ops).await?;
        }
        Ok(gone.len())
    }

    /// Gives back the disk space of segment files every [`RECLAIM_EVERY`]: what receipts
    /// (delivered sealed copies) and retention deleted, once nothing in a file is referenced.
    /// Cheap when nothing was deleted (the store keeps the list of segments to look at).
    pub(super) async fn reclaim_loop(self) {
        let cancel = self.inner.cancel.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RECLAIM_EVERY) => {}
                _ = cancel.cancelled() => return,
            }
            if let Err(e) = self.inner.store.reclaim().await {
                warn!(error = %e, "could not reclaim segment files");
            }
        }
    }

    /// Compacts segment files that are partly live (what retention leaves when partners' periods
    /// differ): every [`COMPACT_EVERY`], on the blocking pool within the slow-read slots, at most
    /// [`COMPACT_BUDGET`] bytes moved a round (sooner again if there is more); a stop ends a
    /// round between two groups of records.
    pub(super) async fn compact_loop(self) {
        let cancel = self.inner.cancel.clone();
        let mut wait = COMPACT_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return,
            }
            let stop = cancel.clone();
            let round =
                self.slow(move |n| n.inner.store.compact_blocking(COMPACT_BUDGET, &|| stop.is_cancelled())).await;
            wait = match round {
                Ok(Ok(done)) if done.moved >= COMPACT_BUDGET => Duration::from_secs(10),
                Ok(Err(e)) => {
                    warn!(error = %e, "could not compact segment files");
                    COMPACT_EVERY
                }
                _ => COMPACT_EVERY,
            };
        }
    }

    /// Keys in force that are retired at a date with nothing to follow them (no newer
    /// generation): this node's and each partner's, as (node, signing kid, retirement).
    pub(super) fn key_expiries(&self) -> Vec<(NodeId, String, crate::timestamp::Timestamp)> {
        let seal = self.seal();
        let ring = seal.keyring();
        let mut nodes: Vec<NodeId> = vec![self.inner.me];
        nodes.extend(self.partner_states().iter().map(|p| p.node));
        nodes
            .into_iter()
            .filter_map(|n| {
                let now = crate::timestamp::Timestamp::now();
                let current = ring.node_at(&n, now)?;
                let until = current.valid_until?;
                // A generation to come (dated after it) follows it: a planned retirement.
                let next = ring.generations(&n).iter().any(|g| g.valid_from.is_some_and(|f| f > now));
                (!next && until > now.plus_secs(-86_400 * 365)).then(|| (n, current.signing_kid.to_string(), until))
            })
            .collect()
    }

    /// The expiry watch: at start and every hour, what will stop working — this node's
    /// certificate, the CA, each CRL's next update, each partner's certificate as last seen —
    /// is said in the log when it comes within 30, 7 and 1 days (a warning) and when it has
    /// passed (an error): once per step, not every hour. `peers list` and `/metrics` show the
    /// same dates.
    pub(super) async fn expiry_loop(self) {
        let cancel = self.inner.cancel.clone();
        let mut said: HashMap<String, u8> = HashMap::new();
        loop {
            let now = crate::timestamp::Timestamp::now();
            let mut items: Vec<(String, crate::timestamp::Timestamp)> = self
                .inner
                .expiries
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(what, name, at)| {
                    let what = match *what {
                        "certificate" => format!("this node's TLS certificate ({name})"),
                        "ca" => format!("the federation CA certificate ({name})"),
                        _ => format!("the CRL's next update ({name})"),
                    };
                    (what, *at)
                })
                .collect();
            for p in self.partner_states() {
                if let Some(c) = &lock(&p.link).certificate {
                    items.push((format!("{}'s TLS certificate (serial {})", p.node, c.serial), c.not_after));
                }
            }
            for (node, kid, at) in self.key_expiries() {
                let whose = if node == self.inner.me { "this node's".to_owned() } else { format!("{node}'s") };
                items.push((
                    format!("{whose} signing and encryption keys in force ({kid}) with no next generation"),
                    at,
                ));
            }
            for (what, at) in items {
                let days = (at.unix() - now.unix()).div_euclid(86_400);
                let step = match days {
                    d if d < 0 => 4,
                    0 | 1 => 3,
                    2..=7 => 2,
                    8..=30 => 1,
                    _ => 0,
                };
                if step > said.get(&what).copied().unwrap_or(0) {
                    if step == 4 {
                        tracing::error!(expired = %at, "{what} has expired");
                    } else {
                        warn!(expires = %at, days, "{what} expires in {days} day(s)");
                    }
                }
                said.insert(what, step);
            }
            tokio::select! {
                _ = tokio::time::sleep(EXPIRY_WATCH_EVERY) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Deletes the segment files nothing refers to any more (what [`Node::reclaim_loop`] does
    /// every [`RECLAIM_EVERY`]). Returns how many went.
    pub async fn reclaim_space(&self) -> Result<usize, NodeError> {
        Ok(self.inner.store.reclaim().await?)
    }

    /// How long the policy with `peer` keeps what was exchanged with it (ms); `None`: for ever.
    fn retention_of(&self, book: &PolicyBook, peer: &NodeId) -> Option<Millis> {
        book.policy(peer).map(|p| u64::from(p.retention_days) * 86_400_000)
    }

    /// Deletes the copies this node sent whose outcome (delivery, rejection, expiry) is older
    /// than the retention of the policy with their recipient: the entry, the signed packet, the
    /// sealed copy if still there, the officers' acknowledgements, the deadline, and each
    /// receipt once no remaining copy is covered by it. In commits of at most
    /// [`PURGE_BATCH`] copies, each recorded in the audit trail (ids only). Returns how many
    /// copies were deleted.
    pub async fn purge_sent(&self, now: Millis) -> Result<usize, NodeError> {
        let book = self.policies();
        let mut total = 0;
        // Every partner a policy says how long to keep for, a former one too (its copies are
        // on disk, not in a machine).
        for peer in book.partners() {
            let Some(keep) = self.retention_of(&book, peer) else { continue };
            let partner = self.partner(peer);
            loop {
                // Only what a commit made terminal is in the index: nothing being written.
                let mut past = self.inner.store.past_retention(peer, now, keep, PURGE_BATCH)?;
                if past.is_empty() {
                    break;
                }
                let walked = past.len();
                // One the machine still holds has a write outstanding (terminal on disk, to be
                // written again after a failed commit): purged now, that write would bring it
                // back. It is purged at a later round, once written and let go.
                if let Some(p) = &partner {
                    let m = lock(&p.sender);
                    past.retain(|(id, _)| m.entry(*id).is_none());
                }
                if past.is_empty() {
                    break;
                }
                let ids: Vec<PacketId> = past.iter().map(|(id, _)| *id).collect();
                let mut ops = crate::delivery::sender::retention_ops(peer, &past);
                let mut receipts = std::collections::BTreeSet::new();
                for id in &ids {
                    let key = pair_key(*id, peer);
                    for (k, _) in self.inner.store.scan(Tree::Reads, &store::reads_prefix(&key))? {
                        ops.push(Op::Delete(Tree::Reads, k));
                    }
                    if let Some(r) = self.inner.store.get(Tree::ReceiptIndex, &key)? {
                        receipts.insert(r);
                    }
                }
                let gone: std::collections::HashSet<PacketId> = ids.iter().copied().collect();
                for r in receipts {
                    if !self.receipt_still_needed(peer, &r, &gone)? {
                        ops.push(Op::Delete(Tree::Receipts, r));
                    }
                }
                let n = ids.len();
                let list = ids.iter().map(PacketId::to_string).collect::<Vec<_>>().join(", ");
                ops.push(Op::Audit(AuditEvent::Admin {
                    action: crate::audit::AdminAction::RetentionPurge,
                    by: "node".into(),
                    detail: format!("deleted {n} copies sent to {peer} past retention: {list}"),
                }));
                self.inner.store.commit(ops).await?;
                if let Some(p) = &partner {
                    lock(&p.sender).forget(ids.iter().copied());
                }
                {
                    let mut deadlines = lock(&self.inner.deadlines);
                    for id in &ids {
                        deadlines.forget(*id, peer);
                    }
                }
                info!(%peer, deleted = n, "copies sent past their retention deleted");
                total += n;
                if walked < PURGE_BATCH {
                    break;
                }
            }
        }
        // A failed sweep is tried again at the next purge; the purges after it go on.
        let swept = self.sweep_orphan_reads().await.unwrap_or_else(|e| {
            warn!(error = %e, "could not sweep acknowledgements of deleted copies");
            0
        });
        Ok(total + swept)
    }

    /// Deletes officers' acknowledgements of copies no longer kept. A ReadAck checked against a
    /// copy just before the copy's retention purge, and committed just after the purge read the
    /// acknowledgements to delete, would keep an officer's name and time past the retention:
    /// two commits, no lock between them. Each purge sweeps them up instead: an acknowledgement
    /// is written only for a copy whose entry is on disk, and an entry, once deleted, never
    /// comes back, so an acknowledgement without its entry is such a leftover. Returns how many
    /// went.
    async fn sweep_orphan_reads(&self) -> Result<usize, NodeError> {
        // A walk of every acknowledgement: on the blocking pool, within the slow-read slots.
        let orphans = self.slow(|node| node.orphan_reads()).await??;
        let n = orphans.len();
        for chunk in orphans.chunks(PURGE_BATCH) {
            let mut ops: Vec<Op> = chunk.iter().map(|k| Op::Delete(Tree::Reads, k.clone())).collect();
            ops.push(Op::Audit(AuditEvent::Admin {
                action: crate::audit::AdminAction::RetentionPurge,
                by: "node".into(),
                detail: format!("deleted {} acknowledgement(s) of copies already deleted by retention", chunk.len()),
            }));
            self.inner.store.commit(ops).await?;
        }
        if n > 0 {
            info!(deleted = n, "acknowledgements of copies already deleted by retention deleted");
        }
        Ok(n)
    }

    /// The keys of acknowledgements whose outbox entry is gone ([`Node::sweep_orphan_reads`]).
    fn orphan_reads(&self) -> Result<Vec<Vec<u8>>, NodeError> {
        let mut orphans = Vec::new();
        let mut last: Option<(Vec<u8>, bool)> = None;
        for (k, _) in self.inner.store.scan(Tree::Reads, &[])? {
            // The pair key (16 bytes of packet id, then the node id), a zero byte, the officer.
            let Some(end) = k.get(16..).and_then(|rest| rest.iter().position(|b| *b == 0)).map(|p| p + 16) else {
                continue;
            };
            let pair = &k[..end];
            let kept = match &last {
                Some((p, kept)) if p.as_slice() == pair => *kept,
                _ => {
                    let kept = self.inner.store.get(Tree::Outbox, pair)?.is_some();
                    last = Some((pair.to_vec(), kept));
                    kept
                }
            };
            if !kept {
                orphans.push(k);
            }
        }
        Ok(orphans)
    }

    /// Whether the receipt stored under `receipt_id` (from `peer`) still covers a copy whose
    /// link to it stays: a receipt covers a batch, and goes with its last copy.
    fn receipt_still_needed(
        &self,
        peer: &NodeId,
        receipt_id: &[u8],
        gone: &std::collections::HashSet<PacketId>,
    ) -> Result<bool, NodeError> {
        let Some(bytes) = self.inner.store.get(Tree::Receipts, receipt_id)? else { return Ok(false) };
        // Verified when it was stored; a receipt that does not verify now (a key no longer in
        // the keyring) is kept rather than judged.
        let Ok(signed) = crate::seal::verify_signed(self.seal().keyring(), &bytes) else { return Ok(true) };
        let Body::DeliveryReceipt(r) = &signed.packet.body else { return Ok(true) };
        for item in &r.receipts {
            if gone.contains(&item.packet_id) {
                continue;
            }
            if self.inner.store.get(Tree::ReceiptIndex, &pair_key(item.packet_id, peer))?.as_deref() == Some(receipt_id)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes the receipts this node issued that are older than the retention of the policy
    /// with the partner they went to (their ids are time-ordered: the oldest are read first,
    /// and the walk stops at the first one within the shortest retention). Returns how many.
    pub async fn purge_issued(&self, now: Millis) -> Result<usize, NodeError> {
        let book = self.policies();
        let Some(shortest) = self.partner_states().iter().filter_map(|p| self.retention_of(&book, &p.node)).min()
        else {
            return Ok(0);
        };
        let mut after: Option<Vec<u8>> = None;
        let mut stop = false;
        let mut total = 0;
        while !stop {
            let keys = self.inner.store.keys_after(Tree::Issued, after.as_deref(), PURGE_BATCH)?;
            if keys.len() < PURGE_BATCH {
                stop = true;
            }
            after = keys.last().cloned();
            let mut ops = Vec::new();
            for k in keys {
                let Ok(id) = <[u8; 16]>::try_from(k.as_slice()).map(PacketId::from_bytes) else { continue };
                let Some(made) = id.unix_millis() else { continue };
                if made.saturating_add(shortest) >= now {
                    stop = true;
                    break;
                }
                let Some(bytes) = self.inner.store.get(Tree::Issued, &k)? else { continue };
                let Ok(route) = crate::seal::peek_route(&bytes) else { continue };
                if self.retention_of(&book, &route.recipient).is_some_and(|keep| made.saturating_add(keep) < now) {
                    ops.push(Op::Delete(Tree::Issued, k));
                }
            }
            if ops.is_empty() {
                continue;
            }
            let n = ops.len();
            ops.push(Op::Audit(AuditEvent::Admin {
                action: crate::audit::AdminAction::RetentionPurge,
                by: "node".into(),
                detail: format!("deleted {n} receipts issued past retention"),
            }));
            self.inner.store.commit(ops).await?;
            total += n;
        }
        if total > 0 {
            info!(deleted = total, "receipts issued past their retention deleted");
        }
        Ok(total)
    }

    /// Deletes the received packets (inbox record, evidence, deadline) older than the retention
    /// of the policy with their sender; the deletion is recorded in the audit trail (ids only).
    /// Packets from a partner without a policy are kept (nothing says how long). Returns how
    /// many were deleted.
    pub async fn purge_received(&self, now: Millis) -> Result<usize, NodeError> {
        let book = self.policies();
        let mut past = Vec::new();
        for (id, rec) in self.inbox()? {
            let Some(keep) = self.retention_of(&book, &rec.sender) else { continue };
            if rec.received_at.saturating_add(keep) < now {
                past.push((id, rec.sender, keep / 86_400_000));
            }
        }
        let n = past.len();
        for chunk in past.chunks(PURGE_BATCH) {
            let mut ops = Vec::with_capacity(chunk.len() * 3 + 1);
            for (id, sender, _) in chunk {
                for tree in [Tree::Inbox, Tree::Evidence, Tree::Deadlines] {
                    ops.push(Op::Delete(tree, pair_key(*id, sender)));
                }
            }
            let gone: Vec<String> =
                chunk.iter().map(|(id, from, days)| format!("{id} from {from} ({days} days)")).collect();
            ops.push(Op::Audit(AuditEvent::Admin {
                action: crate::audit::AdminAction::RetentionPurge,
                by: "node".into(),
                detail: format!("deleted {} received packet(s) past retention: {}", gone.len(), gone.join(", ")),
            }));
            self.inner.store.commit(ops).await?;
            let mut inbox = lock(&self.inner.inbox);
            let mut deadlines = lock(&self.inner.deadlines);
            for (id, sender, _) in chunk {
                inbox.forget(*id, sender);
                deadlines.forget(*id, sender);
            }
            self.inner.listing.removed(chunk.iter().map(|(id, sender, _)| (*id, *sender)).collect());
        }
        if n > 0 {
            info!(deleted = n, "received packets past their retention deleted");
        }
        Ok(n)
    }
}
