//! Pushes (broadcast, track, untrack) and the offline buffer.

use super::*;

impl Task {
    /// Write a push on a joined channel; `waiter` gets the final result.
    pub(super) fn write_push(&mut self, id: ChannelId, kind: PushKind, waiter: Waiter) {
        let Some(ch) = self.channels.get(&id) else {
            let _ = waiter.send(Err(Error::invalid("channel removed")));
            return;
        };
        let Some(join_ref) = ch.phase.join_ref().map(str::to_owned) else {
            let _ = waiter.send(Err(Error::not_connected("channel is not joined")));
            return;
        };
        let topic = ch.topic.clone();
        let ack = ch.config.broadcast_ack;
        let r = self.next_ref();
        let expects_reply = match kind {
            PushKind::Broadcast { event, payload } => {
                let frame = match (self.serializer, payload) {
                    (Serializer::V2, payload) => {
                        let payload = match payload {
                            BroadcastPayload::Json(v) => {
                                UserPayload::Json(serde_json::to_vec(&v).unwrap_or_default().into())
                            }
                            BroadcastPayload::Binary(b) => UserPayload::Binary(b),
                        };
                        let b = UserBroadcast {
                            join_ref: Some(join_ref),
                            msg_ref: Some(r.clone()),
                            topic,
                            event,
                            metadata: None,
                            payload,
                        };
                        match binary::encode_user_broadcast_push(&b) {
                            Ok(bytes) => WsMessage::Binary(bytes),
                            Err(e) => {
                                let _ = waiter.send(Err(Error::invalid(e.to_string())));
                                return;
                            }
                        }
                    }
                    (Serializer::V1, BroadcastPayload::Json(v)) => {
                        let m = Message::new(
                            Some(join_ref),
                            Some(r.clone()),
                            topic,
                            ev::BROADCAST,
                            json!({"type": "broadcast", "event": event, "payload": v}),
                        );
                        match self.serializer.encode_client_message(&m) {
                            WireFrame::Text(t) => WsMessage::Text(t.into()),
                            WireFrame::Binary(b) => WsMessage::Binary(b),
                        }
                    }
                    (Serializer::V1, BroadcastPayload::Binary(_)) => {
                        let _ =
                            waiter.send(Err(Error::invalid("binary broadcasts need vsn 2.0.0")));
                        return;
                    }
                };
                self.write(frame);
                ack
            }
            PushKind::Track(p) => {
                let m = Message::new(
                    Some(join_ref),
                    Some(r.clone()),
                    topic,
                    ev::PRESENCE,
                    json!({"type": "presence", "event": "track", "payload": p}),
                );
                self.write_message(&m);
                true
            }
            PushKind::Untrack => {
                let m = Message::new(
                    Some(join_ref),
                    Some(r.clone()),
                    topic,
                    ev::PRESENCE,
                    json!({"type": "presence", "event": "untrack"}),
                );
                self.write_message(&m);
                true
            }
        };
        if expects_reply {
            self.add_pending(r, PendingKind::Push(waiter));
        } else {
            let _ = waiter.send(Ok(()));
        }
    }

    pub(super) fn on_push(&mut self, id: ChannelId, kind: PushKind) -> Result<PushOutcome> {
        let open = self.state.is_open();
        let policy = self.options.offline_policy;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or_else(|| Error::invalid("channel removed"))?;
        // Presence is remembered and (re)applied on every join.
        match &kind {
            PushKind::Track(p) => ch.tracked = Some(p.clone()),
            PushKind::Untrack => ch.tracked = None,
            PushKind::Broadcast { .. } => {}
        }
        let joined = matches!(ch.phase, Phase::Joined { .. }) && open;
        if joined {
            let (tx, rx) = oneshot::channel();
            self.write_push(id, kind, tx);
            return Ok(PushOutcome::Wait(rx));
        }
        match (&ch.phase, &kind) {
            (_, PushKind::Track(_) | PushKind::Untrack) => Ok(PushOutcome::Done),
            (Phase::Idle, PushKind::Broadcast { .. }) => {
                // Idle after a failure (rejoin policy gave up, bindings mismatched, closed by
                // the server): the user expects the channel, not REST.
                let status = ch.status_tx.borrow().clone();
                match status {
                    ChannelStatus::ChannelError { .. }
                    | ChannelStatus::TimedOut
                    | ChannelStatus::Closed { reason: Some(_) } => {
                        Err(Error::not_connected(format!(
                            "{} is not joined ({}): subscribe again",
                            ch.topic,
                            status.as_str()
                        )))
                    }
                    _ => Ok(PushOutcome::UseRest),
                }
            }
            (Phase::Leaving { .. }, PushKind::Broadcast { .. }) => {
                Err(Error::not_connected("channel is leaving"))
            }
            (_, PushKind::Broadcast { .. }) => match policy {
                OfflinePolicy::Fail => Err(Error::not_connected(format!(
                    "{} is not joined (offline policy: fail)",
                    ch.topic
                ))),
                OfflinePolicy::Buffer { capacity, timeout } => {
                    if ch.buffer.len() >= capacity {
                        return Err(Error::new(
                            ErrorKind::BufferFull,
                            format!("offline buffer of {} is full ({capacity} pushes)", ch.topic),
                        ));
                    }
                    self.next_seq += 1;
                    let seq = self.next_seq;
                    let timer = self.timers.insert(Timer::Buffered { id, seq }, timeout);
                    let (tx, rx) = oneshot::channel();
                    ch.buffer.push_back(Buffered {
                        seq,
                        kind,
                        waiter: tx,
                        timer,
                    });
                    Ok(PushOutcome::Wait(rx))
                }
            },
        }
    }

    pub(super) fn flush_buffer(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let buffered: Vec<Buffered> = ch.buffer.drain(..).collect();
        for b in buffered {
            self.timers.try_remove(&b.timer);
            self.write_push(id, b.kind, b.waiter);
        }
    }

    pub(super) fn fail_buffer(&mut self, id: ChannelId, err: Error) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        for b in ch.buffer.drain(..) {
            self.timers.try_remove(&b.timer);
            let _ = b.waiter.send(Err(err.clone()));
        }
    }
}
