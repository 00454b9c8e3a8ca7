//! The socket's lifecycle: connecting, opening, the reconnect state machine's effects,
//! teardown and close; writing frames to the writer task and heartbeats.

use super::*;

impl Task {
    pub(super) fn transition(&mut self, input: Input) {
        let old = self.state.clone();
        let new = old.clone().next(input, &self.policy, rand::random::<f64>());
        if new == old {
            return;
        }
        tracing::debug!(?old, ?new, ?input, "connection state");
        self.state = new.clone();
        match &new {
            ConnectionState::Connecting { .. } => self.start_connect(),
            ConnectionState::Reconnecting { attempt, delay } => {
                self.io.backoff = Some(Box::pin(tokio::time::sleep(*delay)));
                self.emit(ClientEvent::Reconnecting {
                    attempt: *attempt,
                    delay: *delay,
                });
            }
            ConnectionState::Open => {}
            ConnectionState::Closed { reason } => {
                self.io.connecting = None;
                self.io.backoff = None;
                let err = match reason {
                    CloseReason::GaveUp => {
                        let e =
                            Error::not_connected("gave up reconnecting after max_retries attempts");
                        self.emit(ClientEvent::Error(e.clone()));
                        e
                    }
                    CloseReason::NoReconnect => {
                        Error::not_connected("connection lost and auto_reconnect is off")
                    }
                    CloseReason::User => Error::not_connected("disconnected"),
                };
                for w in self.open_waiters.drain(..) {
                    let _ = w.send(Err(err.clone()));
                }
                let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
                for id in ids {
                    self.fail_buffer(id, err.clone());
                    if let Some(ch) = self.channels.get_mut(&id) {
                        ch.answer_subscribers(Err(err.clone()));
                    }
                }
            }
        }
        self.state_tx.send_replace(new);
    }

    pub(super) fn start_connect(&mut self) {
        let url = self.endpoint.websocket.to_string();
        let timeout = self.options.timeout;
        self.io.connecting = Some(Box::pin(async move {
            match tokio::time::timeout(
                timeout,
                tokio_tungstenite::connect_async_with_config(url, None, true),
            )
            .await
            {
                Ok(Ok((ws, _))) => Ok(ws),
                Ok(Err(e)) => Err(connect_error(e)),
                Err(_) => Err(Error::timeout("connecting timed out")),
            }
        }));
    }

    pub(super) fn on_connect_result(&mut self, res: Result<Ws>) {
        let ws = match res {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "connect failed");
                self.emit(ClientEvent::Error(e.clone()));
                for w in self.open_waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
                if e.kind() == ErrorKind::Authorization {
                    self.refuse_waiting_channels(&e);
                }
                self.last_connect_error = Some(e);
                self.transition(Input::ConnectFailed);
                return;
            }
        };
        self.last_connect_error = None;
        if !matches!(self.state, ConnectionState::Connecting { .. }) {
            return;
        }
        let (sink, stream) = ws.split();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let (failed_tx, failed_rx) = oneshot::channel();
        self.io.writer_task = Some(self.runtime.spawn(writer(sink, rx, failed_tx)));
        self.io.writer = Some(tx);
        self.io.writer_failed = Some(failed_rx);
        self.io.reader = Some(stream);
        self.io.heartbeat = Some(heartbeat_interval(self.hb_interval));
        self.transition(Input::Opened);
        self.emit(ClientEvent::Open);
        for w in self.open_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        if self.options.token_provider.is_some() {
            let gen = self.request_token();
            self.awaiting_token = Some(gen);
            self.timers
                .insert(Timer::TokenWait { gen }, self.options.timeout);
        } else {
            self.rejoin_all();
        }
    }

    /// The handshake was refused for the key or token: every channel waiting for the socket
    /// goes to `CHANNEL_ERROR` with the server's reason and its `subscribe` calls fail now
    /// instead of at their timeout. The channels keep waiting for the socket.
    pub(super) fn refuse_waiting_channels(&mut self, e: &Error) {
        let reason = e.reason().unwrap_or(e.message()).to_owned();
        for ch in self.channels.values_mut() {
            if matches!(ch.phase, Phase::Errored) {
                ch.set_status(ChannelStatus::ChannelError {
                    reason: reason.clone(),
                    kind: e.kind(),
                });
                ch.answer_subscribers(Err(e.clone()));
            }
        }
    }

    /// The heartbeat interval the client and its channels ask for: the smallest of
    /// [`ClientOptions::hb_interval`] and every channel's
    /// [`ChannelConfig::hb_interval`](crate::ChannelConfig::hb_interval), at least 10 ms.
    pub(super) fn wanted_hb_interval(&self) -> Duration {
        self.channels
            .values()
            .filter_map(|c| c.config.hb_interval)
            .fold(self.options.hb_interval, Duration::min)
            .max(Duration::from_millis(10))
    }

    /// Apply a changed [`wanted_hb_interval`](Self::wanted_hb_interval) to the open socket
    /// at once (the next heartbeat is one new interval from now).
    pub(super) fn refresh_hb_interval(&mut self) {
        let hb = self.wanted_hb_interval();
        if hb == self.hb_interval {
            return;
        }
        tracing::debug!(old = ?self.hb_interval, new = ?hb, "heartbeat interval");
        self.hb_interval = hb;
        if self.io.heartbeat.is_some() {
            self.io.heartbeat = Some(heartbeat_interval(hb));
        }
    }

    /// Drop the socket's I/O and everything that was in flight on it. `lost`: the socket
    /// failed (not closed on purpose), which counts as a failure of each joined channel.
    pub(super) fn teardown(&mut self, lost: bool) {
        self.io.reader = None;
        self.io.writer = None;
        self.io.writer_failed = None;
        self.io.heartbeat = None;
        if let Some(h) = self.io.writer_task.take() {
            h.abort();
        }
        self.outbox.clear();
        self.awaiting_token = None;
        if let Some(hb) = self.hb_pending.take() {
            self.timers.try_remove(&hb.timer);
        }
        for (_, p) in self.pending.drain() {
            self.timers.try_remove(&p.timer);
            match p.kind {
                PendingKind::Push(w) => {
                    let _ = w.send(Err(Error::not_connected(
                        "connection lost before the server answered",
                    )));
                }
                PendingKind::Join { .. } | PendingKind::Leave { .. } => {}
            }
        }
        let mut gave_up = Vec::new();
        for ch in self.channels.values_mut() {
            match std::mem::replace(&mut ch.phase, Phase::Idle) {
                phase @ (Phase::Joining { .. } | Phase::Joined { .. } | Phase::Errored) => {
                    if lost && !matches!(phase, Phase::Errored) {
                        ch.failures = ch.failures.saturating_add(1);
                    }
                    ch.phase = Phase::Errored;
                    ch.set_status(ChannelStatus::ChannelError {
                        reason: "connection lost".to_owned(),
                        kind: ErrorKind::NotConnected,
                    });
                    if lost && ch.config.rejoin.gives_up(ch.failures) {
                        gave_up.push(ch.id);
                    }
                }
                Phase::Leaving { waiters, .. } => {
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                    ch.reset_presence();
                    ch.set_status(ChannelStatus::Closed { reason: None });
                }
                Phase::Idle => {}
            }
        }
        for id in gave_up {
            self.give_up(id);
        }
    }

    pub(super) fn on_dropped(&mut self, code: Option<u16>, reason: String) {
        if !self.state.is_open() {
            return;
        }
        tracing::info!(?code, %reason, "realtime socket closed");
        self.teardown(true);
        self.emit(ClientEvent::Close { code, reason });
        self.transition(Input::Dropped);
    }

    /// Close an open socket on purpose (disconnect / shutdown).
    pub(super) fn close_socket(&mut self, reason: Option<&str>) {
        if let Some(w) = &self.io.writer {
            let _ = w.try_send(WsMessage::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: reason.unwrap_or_default().into(),
            })));
        }
        // Let the writer flush the close frame on its own; do not abort it.
        self.io.writer_task = None;
        let was_open = self.state.is_open();
        self.teardown(false);
        if was_open {
            self.emit(ClientEvent::Close {
                code: Some(1000),
                reason: reason.unwrap_or("disconnected").to_owned(),
            });
        }
        self.transition(Input::Disconnect);
    }

    pub(super) fn fail_everything(&mut self, err: Error) {
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            self.fail_buffer(id, err.clone());
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.answer_subscribers(Err(err.clone()));
            }
        }
        for w in self.open_waiters.drain(..) {
            let _ = w.send(Err(err.clone()));
        }
    }

    pub(super) fn emit(&mut self, ev: ClientEvent) {
        self.client_subs.retain_mut(|s| s.offer(ev.clone()));
    }

    pub(super) fn next_ref(&mut self) -> String {
        self.next_ref = self.next_ref.wrapping_add(1);
        self.next_ref.to_string()
    }

    pub(super) fn write(&mut self, frame: WsMessage) {
        if self.io.writer.is_some() {
            self.outbox.push_back(frame);
        }
    }

    pub(super) fn write_message(&mut self, m: &Message) {
        let frame = match self.serializer.encode_client_message(m) {
            WireFrame::Text(t) => WsMessage::Text(t.into()),
            WireFrame::Binary(b) => WsMessage::Binary(b),
        };
        self.write(frame);
    }

    pub(super) fn drain_outbox(&mut self) {
        let Some(w) = &self.io.writer else {
            return;
        };
        while let Some(m) = self.outbox.pop_front() {
            match w.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m))
                | Err(mpsc::error::TrySendError::Closed(m)) => {
                    self.outbox.push_front(m);
                    break;
                }
            }
        }
    }

    pub(super) fn add_pending(&mut self, msg_ref: String, kind: PendingKind) {
        let timer = self
            .timers
            .insert(Timer::Reply(msg_ref.clone()), self.options.timeout);
        self.pending.insert(msg_ref, Pending { kind, timer });
    }

    pub(super) fn send_heartbeat(&mut self) {
        if self.hb_pending.is_some() || !self.state.is_open() {
            return;
        }
        let r = self.next_ref();
        self.write_message(&Message::new(
            None,
            Some(r.clone()),
            PHOENIX_TOPIC,
            ev::HEARTBEAT,
            json!({}),
        ));
        let timer = self
            .timers
            .insert(Timer::Heartbeat(r.clone()), self.options.heartbeat_timeout);
        self.hb_pending = Some(HbPending {
            msg_ref: r,
            sent: Instant::now(),
            timer,
            paused_at_send: self.paused_for(),
        });
    }
}
