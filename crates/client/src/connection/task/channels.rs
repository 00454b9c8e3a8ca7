//! Channel entries and their transitions: join, rejoin, leave, give up, remove.

use super::*;

impl Task {
    pub(super) fn join_payload(&self, ch: &ChannelEntry) -> Value {
        let mut config = ch.config.to_json();
        config["postgres_changes"] = Value::Array(
            ch.bindings
                .iter()
                .map(PostgresChangesFilter::to_json)
                .collect(),
        );
        config["presence"]["enabled"] = Value::Bool(ch.wants_presence());
        json!({
            "config": config,
            "access_token": self.token.clone().unwrap_or_else(|| self.apikey.clone()),
            "version": concat!("supa-realtime-rs/", env!("CARGO_PKG_VERSION")),
        })
    }

    /// Join now if the socket is ready, else wait (phase `Errored`) for the socket/token.
    pub(super) fn join(&mut self, id: ChannelId) {
        let ready = self.state.is_open() && self.awaiting_token.is_none();
        if !ready {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.phase = Phase::Errored;
            }
            return;
        }
        let r = self.next_ref();
        let Some(ch) = self.channels.get(&id) else {
            return;
        };
        let payload = self.join_payload(ch);
        let topic = ch.topic.clone();
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.presence_active = ch.wants_presence();
            ch.presence.set_join_ref(Some(r.clone()));
            ch.phase = Phase::Joining {
                join_ref: r.clone(),
            };
            ch.rejoin_gen += 1;
            ch.set_status(ChannelStatus::Joining);
        }
        self.write_message(&Message::new(
            Some(r.clone()),
            Some(r.clone()),
            topic,
            ev::PHX_JOIN,
            payload,
        ));
        self.add_pending(r.clone(), PendingKind::Join { id, join_ref: r });
    }

    /// Leave the current join of a joined/joining channel and join again at once, e.g. to
    /// enable presence. Status goes `JOINING` → `SUBSCRIBED`; a pending `subscribe` is
    /// answered by the new join.
    pub(super) fn rejoin_now(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let join_ref = match &ch.phase {
            Phase::Joined { join_ref } | Phase::Joining { join_ref } => join_ref.clone(),
            _ => return,
        };
        let topic = ch.topic.clone();
        ch.reset_presence();
        tracing::debug!(%topic, "rejoining with presence enabled");
        if let Some(p) = self.pending.remove(&join_ref) {
            self.timers.try_remove(&p.timer);
        }
        let r = self.next_ref();
        self.write_message(&Message::new(
            Some(join_ref),
            Some(r),
            topic,
            ev::PHX_LEAVE,
            json!({}),
        ));
        self.join(id);
    }

    pub(super) fn rejoin_all(&mut self) {
        let mut ids: Vec<ChannelId> = self
            .channels
            .values()
            .filter(|c| matches!(c.phase, Phase::Errored))
            .map(|c| c.id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.join(id);
        }
    }

    /// The channel failed: rejoin after its delay, unless its rejoin policy gives up.
    pub(super) fn schedule_rejoin(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        ch.rejoin_gen += 1;
        ch.failures = ch.failures.saturating_add(1);
        if ch.config.rejoin.gives_up(ch.failures) {
            return self.give_up(id);
        }
        ch.phase = Phase::Errored;
        let delay = match ch.config.rejoin.initial_backoff {
            Some(first) => reconnect_delay(
                ch.rejoin_attempt,
                first,
                self.options.max_backoff.max(first),
                1.0,
            ),
            None => rejoin_delay(ch.rejoin_attempt, &self.options.rejoin_backoff),
        };
        ch.rejoin_attempt = ch.rejoin_attempt.saturating_add(1);
        let gen = ch.rejoin_gen;
        self.timers.insert(Timer::Rejoin { id, gen }, delay);
    }

    /// The channel's rejoin policy gave up: it stays in its error status, not joined, until
    /// `subscribe` is called again; waiting `subscribe` calls and buffered pushes fail.
    pub(super) fn give_up(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        ch.phase = Phase::Idle;
        ch.rejoin_gen += 1;
        ch.reset_presence();
        let status = ch.status_tx.borrow().clone();
        let kind = status.error_kind().unwrap_or(ErrorKind::ChannelError);
        let mut err = Error::new(
            kind,
            format!(
                "{} stopped rejoining after {} failure(s) in a row (its rejoin policy)",
                ch.topic, ch.failures
            ),
        );
        if let Some(r) = status.reason() {
            err = err.with_reason(r);
        }
        tracing::info!(topic = %ch.topic, failures = ch.failures, "channel gave up rejoining");
        ch.failures = 0;
        ch.rejoin_attempt = 0;
        ch.answer_subscribers(Err(err.clone()));
        self.fail_buffer(id, err);
    }

    pub(super) fn on_join_reply(
        &mut self,
        id: ChannelId,
        join_ref: String,
        status: Status,
        response: &Value,
    ) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.phase.join_ref() != Some(join_ref.as_str())
            || !matches!(ch.phase, Phase::Joining { .. })
        {
            return;
        }
        match status {
            Status::Ok => match match_bindings(&ch.bindings, response) {
                Ok(ids) => {
                    ch.binding_ids = ids;
                    ch.phase = Phase::Joined {
                        join_ref: join_ref.clone(),
                    };
                    ch.rejoin_attempt = 0;
                    ch.failures = 0;
                    ch.last_system_error = None;
                    ch.set_status(ChannelStatus::Subscribed);
                    ch.answer_subscribers(Ok(()));
                    if let Some(p) = ch.tracked.clone() {
                        let (w, _) = oneshot::channel();
                        self.write_push(id, PushKind::Track(p), w);
                    }
                    self.flush_buffer(id);
                }
                Err(e) => {
                    let topic = ch.topic.clone();
                    ch.phase = Phase::Idle;
                    ch.set_status(ChannelStatus::ChannelError {
                        reason: e.message().to_owned(),
                        kind: e.kind(),
                    });
                    ch.answer_subscribers(Err(e.clone()));
                    let r = self.next_ref();
                    self.write_message(&Message::new(
                        Some(join_ref),
                        Some(r),
                        topic,
                        ev::PHX_LEAVE,
                        json!({}),
                    ));
                    self.fail_buffer(id, e);
                }
            },
            Status::Error => {
                let reason = match response.get("reason") {
                    Some(Value::String(s)) => s.clone(),
                    _ => match response {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                };
                let err = Error::from_server_reason(
                    format!("joining {} was refused", ch.topic),
                    reason.clone(),
                );
                ch.set_status(ChannelStatus::ChannelError {
                    reason: reason.clone(),
                    kind: err.kind(),
                });
                ch.answer_subscribers(Err(err));
                self.schedule_rejoin(id);
                if is_auth_reason(&reason) {
                    self.request_token();
                }
            }
        }
    }

    pub(super) fn on_join_timeout(&mut self, id: ChannelId, join_ref: String) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.phase.join_ref() != Some(join_ref.as_str()) {
            return;
        }
        let topic = ch.topic.clone();
        ch.set_status(ChannelStatus::TimedOut);
        ch.answer_subscribers(Err(Error::timeout(format!("joining {topic} timed out"))));
        // As realtime-js: leave the half-joined instance so the rejoin is not a duplicate.
        let r = self.next_ref();
        self.write_message(&Message::new(
            Some(join_ref),
            Some(r),
            topic,
            ev::PHX_LEAVE,
            json!({}),
        ));
        self.schedule_rejoin(id);
    }

    pub(super) fn on_leave_done(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if let Phase::Leaving { waiters, .. } = std::mem::replace(&mut ch.phase, Phase::Idle) {
            ch.reset_presence();
            ch.set_status(ChannelStatus::Closed { reason: None });
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
    }

    pub(super) fn leave(&mut self, id: ChannelId, waiter: Option<Waiter>) {
        let open = self.state.is_open();
        let Some(ch) = self.channels.get_mut(&id) else {
            if let Some(w) = waiter {
                let _ = w.send(Ok(()));
            }
            return;
        };
        ch.rejoin_gen += 1;
        ch.answer_subscribers(Err(Error::new(ErrorKind::ChannelError, "unsubscribed")));
        match std::mem::replace(&mut ch.phase, Phase::Idle) {
            Phase::Joining { join_ref } | Phase::Joined { join_ref } if open => {
                let topic = ch.topic.clone();
                ch.phase = Phase::Leaving {
                    join_ref: join_ref.clone(),
                    waiters: waiter.into_iter().collect(),
                };
                ch.set_status(ChannelStatus::Leaving);
                let r = self.next_ref();
                self.write_message(&Message::new(
                    Some(join_ref),
                    Some(r.clone()),
                    topic,
                    ev::PHX_LEAVE,
                    json!({}),
                ));
                self.add_pending(r, PendingKind::Leave { id });
            }
            Phase::Leaving {
                join_ref,
                mut waiters,
            } => {
                waiters.extend(waiter);
                ch.phase = Phase::Leaving { join_ref, waiters };
            }
            Phase::Idle => {
                if let Some(w) = waiter {
                    let _ = w.send(Ok(()));
                }
            }
            Phase::Joining { .. } | Phase::Joined { .. } | Phase::Errored => {
                ch.reset_presence();
                ch.set_status(ChannelStatus::Closed { reason: None });
                if let Some(w) = waiter {
                    let _ = w.send(Ok(()));
                }
            }
        }
        self.fail_buffer(id, Error::not_connected("channel unsubscribed"));
    }

    pub(super) fn remove(&mut self, id: ChannelId) {
        self.leave(id, None);
        if let Some(ch) = self.channels.remove(&id) {
            self.topics.remove(&ch.topic);
            for b in ch.buffer {
                self.timers.try_remove(&b.timer);
                let _ = b.waiter.send(Err(Error::not_connected("channel removed")));
            }
        }
    }
}
