//! Inbound routing: frames in read batches, decoded once; replies, channel control
//! messages and user events (text and binary broadcasts, presence, postgres_changes,
//! system) routed in one place.

use super::*;

impl Task {
    /// Handle `first` and whatever else is already readable, up to [`READ_BATCH`] frames or
    /// until the backlogs are full; then publish the batch's presence changes.
    pub(super) fn on_frames(
        &mut self,
        first: Option<std::result::Result<WsMessage, tungstenite::Error>>,
    ) {
        self.on_frame(first);
        for _ in 1..READ_BATCH {
            if self
                .flow
                .backlog_full(self.options.backlog_events, self.options.backlog_bytes)
            {
                break;
            }
            let Some(reader) = self.io.reader.as_mut() else {
                break;
            };
            match reader.next().now_or_never() {
                Some(frame) => self.on_frame(frame),
                None => break,
            }
        }
        for id in std::mem::take(&mut self.presence_dirty) {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.publish_presence();
            }
        }
    }

    pub(super) fn on_frame(
        &mut self,
        frame: Option<std::result::Result<WsMessage, tungstenite::Error>>,
    ) {
        let frame = match frame {
            None => return self.on_dropped(None, "connection closed".to_owned()),
            Some(Err(e)) => return self.on_dropped(None, e.to_string()),
            Some(Ok(f)) => f,
        };
        self.last_frame = (Instant::now(), self.paused_for());
        let wire = match frame {
            WsMessage::Text(t) => WireFrame::Text(t.as_str().to_owned()),
            WsMessage::Binary(b) => WireFrame::Binary(b),
            WsMessage::Close(c) => {
                let (code, reason) = match c {
                    Some(c) => (Some(u16::from(c.code)), c.reason.as_str().to_owned()),
                    None => (None, "closed by the server".to_owned()),
                };
                return self.on_dropped(code, reason);
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return,
        };
        match self.serializer.decode_server_frame(&wire) {
            Ok(ServerFrame::Message(m)) => self.on_message(m),
            Ok(ServerFrame::Binary(ServerBinary::UserBroadcast(b))) => {
                let topic = b.topic.clone();
                let join_ref = b.join_ref.clone();
                let msg = BroadcastMessage::from_user_broadcast(b);
                self.route_broadcast(&topic, join_ref.as_deref(), msg);
            }
            Ok(ServerFrame::Binary(other)) => tracing::debug!(?other, "ignoring binary frame"),
            Err(e) => tracing::debug!(error = %e, "dropping malformed frame"),
        }
    }

    /// Every broadcast, text (1.0.0 / 2.0.0) or binary (kind 4), ends here: delivered to the
    /// channel of `topic` if it is joined (or joining or leaving) under `join_ref` (when the
    /// server named one).
    fn route_broadcast(
        &mut self,
        topic: &str,
        join_ref: Option<&str>,
        msg: Option<BroadcastMessage>,
    ) {
        let Some(ch) = self
            .topics
            .get(topic)
            .and_then(|id| self.channels.get_mut(id))
        else {
            return;
        };
        let Some(current) = ch.phase.join_ref() else {
            return;
        };
        if join_ref.is_some_and(|r| r != current) {
            return;
        }
        match msg {
            Some(msg) => ch.dispatch(ChannelEvent::Broadcast(Arc::new(msg)), &[]),
            None => tracing::debug!(topic, "dropping a broadcast whose payload does not parse"),
        }
    }

    pub(super) fn on_message(&mut self, mut m: Message) {
        if m.event == ev::PHX_REPLY {
            return self.on_reply(m);
        }
        if m.event == ev::BROADCAST {
            let msg = BroadcastMessage::from_text(&m.payload);
            return self.route_broadcast(&m.topic, m.join_ref.as_deref(), msg);
        }
        let Some(&id) = self.topics.get(&m.topic) else {
            return;
        };
        let open_token_refresh;
        {
            let Some(ch) = self.channels.get_mut(&id) else {
                return;
            };
            let current = ch.phase.join_ref().map(str::to_owned);
            match m.event.as_str() {
                ev::PHX_CLOSE | ev::PHX_ERROR => {
                    let r = m.join_ref.as_deref().or(m.msg_ref.as_deref());
                    if r.is_none() || r != current.as_deref() {
                        return;
                    }
                }
                _ => {
                    if m.join_ref.is_some() && m.join_ref != current {
                        return;
                    }
                }
            }
            match m.event.as_str() {
                ev::PRESENCE_STATE => {
                    if ch.presence_active {
                        let events = ch
                            .presence
                            .apply_state(state_from_wire_owned(std::mem::take(&mut m.payload)));
                        if ch.apply_presence(events) {
                            self.presence_dirty.push(id);
                        }
                    }
                    return;
                }
                ev::PRESENCE_DIFF => {
                    if ch.presence_active {
                        let events =
                            ch.presence
                                .apply_diff(PresenceDiff::from_wire_owned(std::mem::take(
                                    &mut m.payload,
                                )));
                        if ch.apply_presence(events) {
                            self.presence_dirty.push(id);
                        }
                    }
                    return;
                }
                ev::POSTGRES_CHANGES => {
                    match PostgresChange::from_payload(&m.payload) {
                        Ok(change) => {
                            let matches: Vec<usize> = ch
                                .bindings
                                .iter()
                                .zip(&ch.binding_ids)
                                .enumerate()
                                .filter(|(_, (b, bid))| {
                                    change.ids.contains(bid) && b.event.matches(change.event_type)
                                })
                                .map(|(i, _)| i)
                                .collect();
                            if !matches.is_empty() {
                                ch.dispatch(
                                    ChannelEvent::PostgresChanges(Arc::new(change)),
                                    &matches,
                                );
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "dropping postgres_changes"),
                    }
                    return;
                }
                ev::SYSTEM => {
                    let s = SystemMessage::from_payload(&m.payload);
                    if s.is_error() && s.extension == "system" {
                        ch.last_system_error = Some(s.message.clone());
                    }
                    ch.dispatch(ChannelEvent::System(Arc::new(s)), &[]);
                    return;
                }
                ev::PHX_ERROR => {
                    ch.set_status(ChannelStatus::ChannelError {
                        reason: "the channel crashed on the server".to_owned(),
                        kind: ErrorKind::ChannelError,
                    });
                    open_token_refresh = false;
                }
                ev::PHX_CLOSE => {
                    if matches!(ch.phase, Phase::Leaving { .. }) {
                        return self.on_leave_done(id);
                    }
                    let reason = ch.last_system_error.take();
                    let err = match &reason {
                        Some(r) => Error::from_server_reason(
                            format!("{} was closed by the server", ch.topic),
                            r.clone(),
                        ),
                        None => Error::new(
                            ErrorKind::ChannelError,
                            format!("{} was closed by the server", ch.topic),
                        ),
                    };
                    ch.answer_subscribers(Err(err.clone()));
                    ch.set_status(ChannelStatus::Closed {
                        reason: reason.clone(),
                    });
                    if !self.options.rejoin_on_server_close {
                        ch.phase = Phase::Idle;
                        ch.reset_presence();
                        self.fail_buffer(id, err);
                        return;
                    }
                    open_token_refresh = reason.as_deref().is_some_and(is_auth_reason);
                }
                other => {
                    // Legacy-mode changes (§4.6) or unknown events: expose legacy changes.
                    if matches!(other, "INSERT" | "UPDATE" | "DELETE") {
                        if let Ok(change) = PostgresChange::from_record(&m.payload) {
                            let matches: Vec<usize> = ch
                                .bindings
                                .iter()
                                .enumerate()
                                .filter(|(_, b)| b.event.matches(change.event_type))
                                .map(|(i, _)| i)
                                .collect();
                            ch.dispatch(ChannelEvent::PostgresChanges(Arc::new(change)), &matches);
                        }
                    }
                    return;
                }
            }
        }
        // phx_error, or phx_close we did not ask for: rejoin with backoff.
        if open_token_refresh {
            self.request_token();
        }
        self.schedule_rejoin(id);
    }

    pub(super) fn on_reply(&mut self, m: Message) {
        let Some(r) = m.msg_ref.clone() else {
            return;
        };
        let Some((status, response)) = m.reply_parts() else {
            return;
        };
        if m.topic == PHOENIX_TOPIC {
            if self.hb_pending.as_ref().is_some_and(|hb| hb.msg_ref == r) {
                if let Some(hb) = self.hb_pending.take() {
                    self.timers.try_remove(&hb.timer);
                    let latency = hb.sent.elapsed();
                    self.latency_tx.send_replace(Some(latency));
                    self.emit(ClientEvent::Heartbeat { latency });
                }
            }
            return;
        }
        let Some(p) = self.pending.remove(&r) else {
            return;
        };
        self.timers.try_remove(&p.timer);
        match p.kind {
            PendingKind::Join { id, join_ref } => {
                let response = response.clone();
                self.on_join_reply(id, join_ref, status, &response);
            }
            PendingKind::Leave { id } => self.on_leave_done(id),
            PendingKind::Push(w) => {
                let result = match status {
                    Status::Ok => Ok(()),
                    Status::Error => {
                        let reason = match response {
                            Value::String(s) => s.clone(),
                            v => v
                                .get("reason")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string()),
                        };
                        Err(Error::from_server_reason(
                            "the server refused the push",
                            reason,
                        ))
                    }
                };
                let _ = w.send(result);
            }
        }
    }
}
