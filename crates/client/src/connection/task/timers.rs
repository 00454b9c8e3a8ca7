//! What each timer does when it fires (reply timeouts, heartbeat liveness, rejoins, buffered
//! pushes, token refreshes, drop reports).

use super::*;

impl Task {
    pub(super) fn on_timer(&mut self, t: Timer) {
        match t {
            Timer::Reply(r) => {
                let Some(p) = self.pending.remove(&r) else {
                    return;
                };
                match p.kind {
                    PendingKind::Join { id, join_ref } => self.on_join_timeout(id, join_ref),
                    PendingKind::Leave { id } => self.on_leave_done(id),
                    PendingKind::Push(w) => {
                        let _ = w.send(Err(Error::timeout("no reply from the server in time")));
                    }
                }
            }
            Timer::DropReport => self.report_drops(),
            Timer::Heartbeat(r) => {
                if self.hb_pending.as_ref().is_some_and(|hb| hb.msg_ref == r) {
                    // Dead only if silent (no reply, no frame) for the timeout, counting
                    // only reading time (see the module docs).
                    let paused_now = self.paused_for();
                    if let Some(hb) = self.hb_pending.as_mut() {
                        let (since, paused_then) = if self.last_frame.0 > hb.sent {
                            self.last_frame
                        } else {
                            (hb.sent, hb.paused_at_send)
                        };
                        let paused = paused_now.saturating_sub(paused_then);
                        let silent = since.elapsed().saturating_sub(paused);
                        let timeout = self.options.heartbeat_timeout;
                        if silent < timeout {
                            let left = (timeout - silent).max(Duration::from_millis(10));
                            hb.timer = self.timers.insert(Timer::Heartbeat(r), left);
                            return;
                        }
                    }
                    self.hb_pending = None;
                    let e = Error::timeout("heartbeat timeout: the server stopped answering");
                    tracing::warn!("{e}");
                    self.emit(ClientEvent::Error(e));
                    if let Some(w) = &self.io.writer {
                        let _ = w.try_send(WsMessage::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "heartbeat timeout".into(),
                        })));
                    }
                    self.on_dropped(Some(1000), "heartbeat timeout".to_owned());
                }
            }
            Timer::Rejoin { id, gen } => {
                let due = self
                    .channels
                    .get(&id)
                    .is_some_and(|c| c.rejoin_gen == gen && matches!(c.phase, Phase::Errored));
                if due {
                    self.join(id);
                }
            }
            Timer::Buffered { id, seq } => {
                let Some(ch) = self.channels.get_mut(&id) else {
                    return;
                };
                if let Some(pos) = ch.buffer.iter().position(|b| b.seq == seq) {
                    if let Some(b) = ch.buffer.remove(pos) {
                        let _ = b.waiter.send(Err(Error::timeout(
                            "the push waited too long in the offline buffer",
                        )));
                    }
                }
            }
            Timer::TokenRefresh { gen } => {
                if gen == self.token_gen {
                    self.request_token();
                }
            }
            Timer::TokenWait { gen } => {
                if self.awaiting_token == Some(gen) {
                    self.awaiting_token = None;
                    self.rejoin_all();
                }
            }
        }
    }
}
