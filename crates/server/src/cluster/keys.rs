//! Names of the Redis keys and channels, all under the cluster's prefix.
//!
//! A topic is identified as `<0|1>:<name>` (public or private, then the sub-topic), so the
//! two rooms of one name never mix. Per topic: a pub/sub channel, a stream of recent
//! messages, a meta hash (`e` epoch, `s` top offset) and a presence hash. Cluster-wide: one
//! sorted set of presence lease expiries and one of node heartbeats; per rate counter, one
//! key per 5 s bucket.

use crate::registry::TopicKey;

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// The Redis names of one topic.
#[derive(Debug, Clone)]
pub(crate) struct TopicKeys {
    pub(crate) id: String,
    pub(crate) channel: String,
    pub(crate) stream: String,
    pub(crate) meta: String,
    pub(crate) presence: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn topic_id(key: &TopicKey) -> String {
        format!("{}:{}", u8::from(key.private), key.name)
    }

    pub(crate) fn parse_topic_id(id: &str) -> Option<TopicKey> {
        let (private, name) = id.split_once(':')?;
        let private = match private {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(TopicKey {
            name: name.to_owned(),
            private,
        })
    }

    pub(crate) fn topic(&self, key: &TopicKey) -> TopicKeys {
        self.topic_by_id(&Self::topic_id(key))
    }

    pub(crate) fn topic_by_id(&self, id: &str) -> TopicKeys {
        let p = &self.prefix;
        TopicKeys {
            channel: format!("{p}:ch:{id}"),
            stream: format!("{p}:st:{id}"),
            meta: format!("{p}:mt:{id}"),
            presence: format!("{p}:pr:{id}"),
            id: id.to_owned(),
        }
    }

    /// Lease expiries (ms since the epoch) of every presence entry, member `<field>\n<topic id>`.
    pub(crate) fn presence_expiry(&self) -> String {
        format!("{}:pr-exp", self.prefix)
    }

    /// Concurrent users per node (field: node id).
    pub(crate) fn users(&self) -> String {
        format!("{}:users", self.prefix)
    }

    /// The cluster's count of the rate counter `name` in the 5 s bucket `bucket`.
    pub(crate) fn rate(&self, name: &str, bucket: u64) -> String {
        format!("{}:rate:{name}:{bucket}", self.prefix)
    }

    /// Node heartbeats (ms since the epoch), member the node id.
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        let keys = Keys::new("p");
        for (name, private) in [("room:1", false), ("a b\nc", true), ("", false)] {
            let key = TopicKey {
                name: name.into(),
                private,
            };
            let t = keys.topic(&key);
            assert_eq!(Keys::parse_topic_id(&t.id), Some(key));
            assert!(t.channel.starts_with("p:ch:"));
        }
        assert_eq!(Keys::parse_topic_id("2:x"), None);
        assert_eq!(Keys::parse_topic_id("x"), None);
    }
}
