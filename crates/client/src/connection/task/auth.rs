//! Access tokens: the provider, refreshes and `access_token` pushes.

use super::*;

impl Task {
    /// Ask the provider for a token on its own task. Returns the request's generation.
    pub(super) fn request_token(&mut self) -> u64 {
        self.token_gen += 1;
        let gen = self.token_gen;
        if let Some(p) = &self.options.token_provider {
            let fut = p.fetch();
            let tx = self.internal_tx.clone();
            self.runtime.spawn(async move {
                let result = fut.await;
                let _ = tx.send(Internal::Token { gen, result });
            });
        }
        gen
    }

    pub(super) fn set_auth(&mut self, token: Option<String>) {
        if self.options.token_provider.is_some() {
            if let Some(delay) = token
                .as_deref()
                .and_then(|t| refresh_delay(t, SystemTime::now()))
            {
                self.token_gen += 1;
                let gen = self.token_gen;
                self.timers.insert(Timer::TokenRefresh { gen }, delay);
            }
        }
        if token == self.token {
            return;
        }
        self.token = token;
        self.token_tx.send_replace(self.token.clone());
        let access_token = self.token.clone().unwrap_or_else(|| self.apikey.clone());
        let joined: Vec<(String, String)> = self
            .channels
            .values()
            .filter_map(|c| match &c.phase {
                Phase::Joined { join_ref } => Some((c.topic.clone(), join_ref.clone())),
                _ => None,
            })
            .collect();
        for (topic, join_ref) in joined {
            let r = self.next_ref();
            self.write_message(&Message::new(
                Some(join_ref),
                Some(r),
                topic,
                ev::ACCESS_TOKEN,
                json!({"access_token": access_token}),
            ));
        }
    }

    pub(super) fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Token { gen, result } => {
                match result {
                    Ok(t) => self.set_auth(Some(t)),
                    Err(msg) => {
                        let e = Error::new(ErrorKind::Authorization, "the token provider failed")
                            .with_reason(msg);
                        self.emit(ClientEvent::Error(e));
                        // Try again soon rather than letting the token run out.
                        self.token_gen += 1;
                        let g = self.token_gen;
                        self.timers
                            .insert(Timer::TokenRefresh { gen: g }, Duration::from_secs(5));
                    }
                }
                if self.awaiting_token == Some(gen) {
                    self.awaiting_token = None;
                    self.rejoin_all();
                }
            }
        }
    }
}
