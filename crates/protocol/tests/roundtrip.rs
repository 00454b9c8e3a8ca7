//! Property tests: every frame kind survives encode → decode in both serializers, and no
//! input makes a decoder panic.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Value};
use supa_realtime_protocol::binary::{self, BinaryPush, ServerBinary};
use supa_realtime_protocol::{
    ClientFrame, Message, Serializer, ServerFrame, UserBroadcast, UserPayload, WireFrame,
};

fn short_string() -> impl Strategy<Value = String> {
    // Header fields of binary frames are at most 255 bytes; stay under that in characters
    // of up to 4 bytes each.
    "\\PC{0,60}"
}

fn opt_ref() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[0-9]{1,6}")
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Message> {
    (
        opt_ref(),
        opt_ref(),
        short_string(),
        short_string(),
        json_value(),
    )
        .prop_map(|(join_ref, msg_ref, topic, event, payload)| Message {
            join_ref,
            msg_ref,
            topic,
            event,
            payload,
        })
}

fn user_payload() -> impl Strategy<Value = UserPayload> {
    prop_oneof![
        json_value().prop_map(|v| UserPayload::Json(Bytes::from(v.to_string()))),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| UserPayload::Binary(Bytes::from(b))),
    ]
}

fn metadata() -> impl Strategy<Value = Option<Bytes>> {
    prop::option::of("[a-z0-9-]{1,20}".prop_map(|id| Bytes::from(json!({"id": id}).to_string())))
}

proptest! {
    #[test]
    fn client_messages_round_trip(m in message(), v2 in any::<bool>()) {
        let s = if v2 { Serializer::V2 } else { Serializer::V1 };
        let frame = s.encode_client_message(&m);
        prop_assert_eq!(s.decode_client_frame(&frame).unwrap(), ClientFrame::Message(m));
    }

    #[test]
    fn server_messages_round_trip(m in message(), v2 in any::<bool>()) {
        let s = if v2 { Serializer::V2 } else { Serializer::V1 };
        let frame = s.encode_server_message(&m);
        let decoded = match s.decode_server_frame(&frame).unwrap() {
            ServerFrame::Message(d) => d,
            other => panic!("{other:?}"),
        };
        let mut expected = m;
        if !v2 {
            // 1.0.0 server output never carries join_ref.
            expected.join_ref = None;
        }
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn user_broadcast_push_round_trip(
        join_ref in opt_ref(), msg_ref in opt_ref(), topic in short_string(),
        event in short_string(), metadata in metadata(), payload in user_payload()
    ) {
        let b = UserBroadcast { join_ref, msg_ref, topic, event, metadata, payload };
        let bytes = binary::encode_user_broadcast_push(&b).unwrap();
        prop_assert_eq!(
            Serializer::V2.decode_client_frame(&WireFrame::Binary(bytes)).unwrap(),
            ClientFrame::UserBroadcast(b)
        );
    }

    #[test]
    fn user_broadcast_round_trip(
        topic in short_string(), event in short_string(), metadata in metadata(), payload in user_payload()
    ) {
        let b = UserBroadcast { join_ref: None, msg_ref: None, topic, event, metadata, payload };
        let frame = Serializer::V2.encode_user_broadcast(&b).unwrap();
        prop_assert_eq!(
            Serializer::V2.decode_server_frame(&frame).unwrap(),
            ServerFrame::Binary(ServerBinary::UserBroadcast(b.clone()))
        );
        // On 1.0.0 a JSON payload becomes a text broadcast with the same content.
        match (&b.payload, Serializer::V1.encode_user_broadcast(&b)) {
            (UserPayload::Binary(_), None) => {}
            (UserPayload::Json(raw), Some(frame)) => {
                let ServerFrame::Message(m) = Serializer::V1.decode_server_frame(&frame).unwrap() else {
                    panic!("text expected")
                };
                prop_assert_eq!(m.event, "broadcast");
                prop_assert_eq!(&m.payload["event"], &Value::from(b.event.clone()));
                let inner: Value = serde_json::from_slice(raw).unwrap();
                prop_assert_eq!(&m.payload["payload"], &inner);
            }
            (p, f) => panic!("unexpected {p:?} -> {f:?}"),
        }
    }

    #[test]
    fn opaque_push_and_broadcast_round_trip(
        join_ref in opt_ref(), msg_ref in opt_ref(), topic in short_string(), event in short_string(),
        data in prop::collection::vec(any::<u8>(), 0..64)
    ) {
        let p = BinaryPush { join_ref, msg_ref, topic: topic.clone(), event: event.clone(), data: Bytes::from(data.clone()) };
        let bytes = binary::encode_push(&p).unwrap();
        prop_assert_eq!(
            Serializer::V2.decode_client_frame(&WireFrame::Binary(bytes)).unwrap(),
            ClientFrame::BinaryPush(p)
        );
        let bytes = binary::encode_broadcast(&topic, &event, &data).unwrap();
        prop_assert_eq!(
            binary::decode_server(&bytes).unwrap(),
            ServerBinary::Broadcast { topic, event, data: Bytes::from(data) }
        );
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let b = Bytes::from(bytes.clone());
        for s in [Serializer::V1, Serializer::V2] {
            let _ = s.decode_client_frame(&WireFrame::Binary(b.clone()));
            let _ = s.decode_server_frame(&WireFrame::Binary(b.clone()));
            let _ = s.decode_text(&bytes);
        }
    }
}
