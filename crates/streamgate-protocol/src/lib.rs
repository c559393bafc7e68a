//! Streamgate's pub/sub wire format and a small async client.
//!
//! The types are generated from `proto/pubsub.proto`, which is byte-compatible with Apache APISIX's
//! pub/sub schema: one binary WebSocket message carries one [`PubSubReq`] (client to gateway) or one
//! [`PubSubResp`] (gateway to client). [`ErrorCode`] names the error classes the gateway sends, and
//! [`PubSubClient`] speaks the protocol over a WebSocket for tests, benchmarks and the examples.
#![deny(
    rust_2018_idioms,
    unsafe_code,
    missing_docs,
    rustdoc::broken_intra_doc_links
)]
#![warn(missing_debug_implementations, clippy::clone_on_ref_ptr)]

mod client;
mod codes;

#[allow(missing_docs, clippy::all)]
mod wire {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

pub use client::{ClientError, PubSubClient};
pub use codes::ErrorCode;
pub use wire::{
    cmd_kafka_subscribe, pub_sub_req, pub_sub_resp, CmdEmpty, CmdKafkaCommit, CmdKafkaCredit,
    CmdKafkaFetch, CmdKafkaListOffset, CmdKafkaSubscribe, CmdKafkaUnsubscribe, CmdPing, ErrorResp,
    KafkaAssignment, KafkaCommitResp, KafkaFetchResp, KafkaHeader, KafkaListOffsetResp,
    KafkaMessage, KafkaPartitionRecords, KafkaRecordsPush, KafkaSubscribeResp,
    KafkaUnsubscribeResp, PartitionOffset, PartitionStart, PongResp, PubSubReq, PubSubResp,
    RecordFilter,
};

/// `prost`'s encoding traits, re-exported so users need not depend on the same prost version.
pub use prost::Message;

impl PubSubReq {
    /// A request carrying `cmd` under `sequence`.
    pub fn new(sequence: i64, cmd: pub_sub_req::Req) -> Self {
        Self {
            sequence,
            req: Some(cmd),
        }
    }
}

impl PubSubResp {
    /// An `error_resp` answer to the request numbered `sequence`.
    pub fn error(sequence: i64, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            sequence,
            resp: Some(pub_sub_resp::Resp::ErrorResp(ErrorResp {
                code: code as i32,
                message: message.into(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reference encodings of the contract: every generated type must produce and accept these
    //! bytes exactly, or APISIX clients break.
    use super::*;
    use pub_sub_req::Req;
    use pub_sub_resp::Resp;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("test vector is hex"))
            .collect()
    }

    #[test]
    fn requests_encode_as_apisix_does() {
        let fetch = PubSubReq::new(
            6,
            Req::CmdKafkaFetch(CmdKafkaFetch {
                topic: "test-consumer".into(),
                partition: 0,
                offset: 14,
                ..Default::default()
            }),
        );
        let expected = hex("08 06 8a 02 11 0a 0d 74 65 73 74 2d 63 6f 6e 73 75 6d 65 72 18 0e");
        assert_eq!(fetch.encode_to_vec(), expected);
        assert_eq!(PubSubReq::decode(&expected[..]).expect("decodes"), fetch);

        let ping = PubSubReq::new(
            0,
            Req::CmdPing(CmdPing {
                state: "test".into(),
            }),
        );
        assert_eq!(ping.encode_to_vec(), hex("82 02 06 0a 04 74 65 73 74"));

        let empty = PubSubReq::new(0, Req::CmdEmpty(CmdEmpty {}));
        assert_eq!(empty.encode_to_vec(), hex("fa 01 00"));
    }

    #[test]
    fn responses_encode_as_apisix_does() {
        let list = |sequence, offset| PubSubResp {
            sequence,
            resp: Some(Resp::KafkaListOffsetResp(KafkaListOffsetResp { offset })),
        };
        // An empty sub-message is still sent, so "offset 0" differs from "no answer".
        assert_eq!(list(2, 0).encode_to_vec(), hex("08 02 92 02 00"));
        assert_eq!(list(3, 30).encode_to_vec(), hex("08 03 92 02 02 08 1e"));

        let fetch = PubSubResp {
            sequence: 9,
            resp: Some(Resp::KafkaFetchResp(KafkaFetchResp::default())),
        };
        assert_eq!(fetch.encode_to_vec(), hex("08 09 8a 02 00"));

        // APISIX sends code 0; the contract's vector is checked with that code.
        let mut error = PubSubResp::error(0, ErrorCode::BadRequest, "unknown command");
        if let Some(Resp::ErrorResp(e)) = error.resp.as_mut() {
            e.code = 0;
        }
        let mut expected = hex("fa 01 11 12 0f");
        expected.extend_from_slice(b"unknown command");
        assert_eq!(error.encode_to_vec(), expected);
    }

    #[test]
    fn sequence_survives_the_full_int64_range() {
        for sequence in [0, 1, 1 << 62, i64::MAX, -1, i64::MIN] {
            let req = PubSubReq::new(sequence, Req::CmdEmpty(CmdEmpty {}));
            let back = PubSubReq::decode(&req.encode_to_vec()[..]).expect("decodes");
            assert_eq!(back.sequence, sequence);
        }
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let garbage = hex("21 40 23 24 25 5e 26 2a e4 b8 ad e6 96 87");
        assert!(PubSubReq::decode(&garbage[..]).is_err());
    }

    #[test]
    fn error_codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_i32(code as i32), Some(code));
        }
        assert_eq!(ErrorCode::from_i32(0), None);
    }
}
