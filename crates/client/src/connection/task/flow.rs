//! Flow control on the task's side: moving backlogs into consumer queues, the pause clock
//! and drop reports (see [`crate::queue`] and the parent module's docs).

use super::*;

impl Task {
    /// Move waiting events into the consumers' queues where there is room now.
    pub(super) fn flush_backlogs(&mut self) {
        for ch in self.channels.values_mut() {
            ch.subs.retain_mut(|(_, s)| s.flush());
        }
        self.client_subs.retain_mut(Subscriber::flush);
    }

    /// Whether the socket may be read now; keeps the pause clock.
    pub(super) fn track_pause(&mut self) -> bool {
        let full = self
            .flow
            .backlog_full(self.options.backlog_events, self.options.backlog_bytes);
        match (full, self.paused_since) {
            (true, None) => {
                tracing::debug!("consumers are behind: pausing the reading of the socket");
                self.paused_since = Some(Instant::now());
            }
            (false, Some(since)) => {
                self.paused_total += since.elapsed();
                self.paused_since = None;
            }
            _ => {}
        }
        !full
    }

    /// How long reading has been paused over the task's life.
    pub(super) fn paused_for(&self) -> Duration {
        self.paused_total + self.paused_since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Report drops since the last report: a warning with the count per channel, and a
    /// [`ChannelEvent::Dropped`] to the channel's error listeners.
    pub(super) fn report_drops(&mut self) {
        self.drop_report_due = false;
        for ch in self.channels.values_mut() {
            let count: u64 = ch.subs.iter_mut().map(|(_, s)| s.take_unreported()).sum();
            if count > 0 {
                let total = ch.dropped.load(Ordering::Relaxed);
                tracing::warn!(
                    topic = %ch.topic,
                    dropped = count,
                    total,
                    "slow consumer: {count} event(s) dropped on {} (overflow policy drops; {total} so far)",
                    ch.topic
                );
                ch.dispatch(ChannelEvent::Dropped { count, total }, &[]);
            }
        }
        let count: u64 = self
            .client_subs
            .iter_mut()
            .map(Subscriber::take_unreported)
            .sum();
        if count > 0 {
            tracing::warn!(
                dropped = count,
                "slow consumer: {count} socket event(s) dropped (overflow policy drops)"
            );
        }
    }
}
