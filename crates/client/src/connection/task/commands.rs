//! Commands from the handles.

use super::*;

impl Task {
    pub(super) fn on_command(&mut self, c: Command) {
        match c {
            Command::Channel {
                topic,
                config,
                reply,
            } => {
                let topic = if topic.starts_with(supa_realtime_protocol::TOPIC_PREFIX) {
                    topic
                } else {
                    format!("{}{topic}", supa_realtime_protocol::TOPIC_PREFIX)
                };
                if let Some(ch) = self.topics.get(&topic).and_then(|id| self.channels.get(id)) {
                    let _ = reply.send(ch.parts());
                    return;
                }
                self.next_channel_id += 1;
                let id = self.next_channel_id;
                let (status_tx, _) = watch::channel(ChannelStatus::Idle);
                let (presence_tx, _) = watch::channel(PresenceState::new());
                let ch = ChannelEntry {
                    id,
                    topic: topic.clone(),
                    config,
                    bindings: Vec::new(),
                    binding_ids: Vec::new(),
                    phase: Phase::Idle,
                    status_tx,
                    presence_tx,
                    subs: Vec::new(),
                    presence: PresenceSync::new(),
                    presence_pending: Vec::new(),
                    presence_listeners: false,
                    presence_active: false,
                    tracked: None,
                    buffer: VecDeque::new(),
                    subscribe_waiters: Vec::new(),
                    rejoin_attempt: 0,
                    failures: 0,
                    rejoin_gen: 0,
                    last_system_error: None,
                    dropped: Arc::new(AtomicU64::new(0)),
                };
                let _ = reply.send(ch.parts());
                self.topics.insert(topic, id);
                self.channels.insert(id, ch);
                self.refresh_hb_interval();
            }
            Command::Channels { reply } => {
                let mut parts: Vec<ChannelParts> =
                    self.channels.values().map(ChannelEntry::parts).collect();
                parts.sort_by_key(|p| p.id);
                let _ = reply.send(parts);
            }
            Command::Subscribe { id, reply } => {
                let Some(ch) = self.channels.get_mut(&id) else {
                    let _ = reply.send(Err(Error::invalid("channel removed")));
                    return;
                };
                let idle = matches!(ch.phase, Phase::Idle);
                if matches!(ch.phase, Phase::Idle | Phase::Errored) && !self.state.is_open() {
                    // The socket cannot open for now: say so at once (the channel still
                    // joins when it opens).
                    let refused = match (&self.state, &self.last_connect_error) {
                        (ConnectionState::Closed { .. }, _) => Some(Error::not_connected(
                            "the client is disconnected; reconnect to join",
                        )),
                        (_, Some(e)) if e.kind() == ErrorKind::Authorization => Some(e.clone()),
                        _ => None,
                    };
                    if let Some(e) = refused {
                        if idle {
                            ch.rejoin_attempt = 0;
                            ch.failures = 0;
                            ch.phase = Phase::Errored;
                        }
                        if e.kind() == ErrorKind::Authorization {
                            ch.set_status(ChannelStatus::ChannelError {
                                reason: e.reason().unwrap_or(e.message()).to_owned(),
                                kind: e.kind(),
                            });
                        }
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
                match ch.phase {
                    Phase::Joined { .. } => {
                        let _ = reply.send(Ok(()));
                    }
                    Phase::Joining { .. } | Phase::Errored => ch.subscribe_waiters.push(reply),
                    Phase::Leaving { .. } => {
                        let _ = reply.send(Err(Error::invalid(
                            "the channel is leaving; subscribe after unsubscribe returns",
                        )));
                    }
                    Phase::Idle => {
                        ch.subscribe_waiters.push(reply);
                        ch.rejoin_attempt = 0;
                        ch.failures = 0;
                        self.join(id);
                    }
                }
            }
            Command::Unsubscribe { id, reply } => self.leave(id, Some(reply)),
            Command::Remove { id, reply } => {
                self.remove(id);
                self.refresh_hb_interval();
                let _ = reply.send(Ok(()));
            }
            Command::RemoveAll { reply } => {
                let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
                for id in ids {
                    self.remove(id);
                }
                self.refresh_hb_interval();
                let _ = reply.send(Ok(()));
            }
            Command::Listen {
                id,
                filter,
                sub,
                reply,
            } => {
                let Some(ch) = self.channels.get_mut(&id) else {
                    let _ = reply.send(Err(Error::invalid("channel removed")));
                    return;
                };
                let presence = matches!(filter, EventFilter::Presence | EventFilter::All);
                if presence {
                    ch.presence_listeners = true;
                }
                let mut sub = sub;
                sub.count_in(ch.dropped.clone());
                ch.subs.push((filter, sub));
                let _ = reply.send(Ok(()));
                // As realtime-js and the official Python client: presence enabled on a joined
                // (or joining) channel takes effect by joining again, so that the server
                // sends the presence state.
                let joined = matches!(ch.phase, Phase::Joined { .. } | Phase::Joining { .. });
                if presence && joined && !ch.presence_active {
                    self.rejoin_now(id);
                }
            }
            Command::AddBinding {
                id,
                filter,
                sub,
                reply,
            } => {
                let Some(ch) = self.channels.get_mut(&id) else {
                    let _ = reply.send(Err(Error::invalid("channel removed")));
                    return;
                };
                if !matches!(ch.phase, Phase::Idle) {
                    let _ = reply.send(Err(Error::invalid(
                        "postgres_changes bindings must be added before subscribe",
                    )));
                    return;
                }
                ch.bindings.push(filter);
                let idx = ch.bindings.len() - 1;
                let mut sub = sub;
                sub.count_in(ch.dropped.clone());
                ch.subs.push((EventFilter::Postgres(idx), sub));
                let _ = reply.send(Ok(()));
            }
            Command::Push { id, kind, reply } => {
                let outcome = self.on_push(id, kind);
                let _ = reply.send(outcome);
            }
            Command::SetAuth { token } => self.set_auth(token),
            Command::ClientListen { sub } => self.client_subs.push(sub),
            Command::WaitOpen { reply } => match &self.state {
                ConnectionState::Open => {
                    let _ = reply.send(Ok(()));
                }
                ConnectionState::Closed { .. } => {
                    let _ = reply.send(Err(Error::not_connected("the client is disconnected")));
                }
                _ => self.open_waiters.push(reply),
            },
            Command::Connect => self.transition(Input::Connect),
            Command::Disconnect { reply } => {
                self.close_socket(Some("disconnect"));
                let _ = reply.send(());
            }
        }
    }
}
